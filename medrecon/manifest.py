"""The prepare manifest: one JSON object per line, one line per volume (or per refused file).

Fields (the command-line contract): ``id``, ``format`` (dicom|nifti|h5), ``paths``, ``modality``, ``shape``,
``spacing``, ``split`` (train|val|test), ``status`` (ok|rejected), ``reason`` (a ``Reason`` code for rejected
records, else null) and ``detail`` (a sentence for humans, no patient data); optionally ``nonfinite``
(``{"nan", "posinf", "neginf"}`` voxel counts where prepare counted them, see ``medrecon.io.finite``; null or
absent otherwise, so older manifests read unchanged). Unknown keys are kept in ``extra`` and written back.

Paths: in memory a record's ``paths`` are absolute. On disk they are written *relative to the manifest's
folder* when every path of every record lies inside that folder (an archive with its manifest at the top can
be moved as a whole), and absolute otherwise. ``read_manifest`` resolves relative paths against the manifest's
folder, or against ``root`` when given (a manifest shipped separately from its archive, such as
``data_manifests/demo.jsonl``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrecon.io.atomic import atomic_write_text
from medrecon.io.finite import NonFinite

FORMATS = ("dicom", "nifti", "h5")
STATUSES = ("ok", "rejected")
SPLITS = ("train", "val", "test")
_FIELDS = (
    "id", "format", "paths", "modality", "shape", "spacing", "split", "status", "reason", "detail", "nonfinite"
)  # fmt: skip


class ManifestError(ValueError):
    """A manifest that cannot be used: missing, empty, or a line that is not a valid record (named)."""


@dataclass
class ManifestRecord:
    """One manifest line.

    Attributes:
        id: opaque stable identifier (``s-`` + 16 hex digits); no patient data.
        format: ``dicom``, ``nifti`` or ``h5``.
        paths: absolute file paths; a DICOM series lists its files in slice order.
        modality: DICOM modality code (``MR``, ``CT``, ...) or ``None`` when the format does not record it.
        shape: ``(I, J, K)`` voxels of the volume ``load_item`` returns, or ``None`` (rejected before known).
        spacing: voxel size in mm along those axes, or ``None``.
        split: ``train``, ``val`` or ``test``.
        status: ``ok`` or ``rejected``.
        reason: the ``Reason`` code of a rejected record, ``None`` when ok.
        detail: a human sentence (why rejected, what was dropped); never patient data.
        nonfinite: NaN/+inf/-inf voxel counts when prepare counted them (NIfTI), else ``None``; NaN voxels
            are read as the background value, infinities refuse the item (``medrecon.io.finite``).
        extra: keys this version does not know, kept for round trips.
    """

    id: str
    format: str
    paths: list[Path]
    modality: str | None
    shape: tuple[int, ...] | None
    spacing: tuple[float, ...] | None
    split: str
    status: str
    reason: str | None = None
    detail: str = ""
    nonfinite: NonFinite | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self, base: Path | None = None) -> dict[str, Any]:
        """The JSON object; paths relative to ``base`` when given (else absolute)."""
        paths = [os.path.relpath(p, base) if base is not None else str(p) for p in self.paths]
        obj: dict[str, Any] = {
            "id": self.id,
            "format": self.format,
            "paths": [p.replace(os.sep, "/") for p in paths],
            "modality": self.modality,
            "shape": list(self.shape) if self.shape is not None else None,
            "spacing": [round(float(s), 6) for s in self.spacing] if self.spacing is not None else None,
            "split": self.split,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "nonfinite": self.nonfinite.to_dict() if self.nonfinite is not None else None,
        }
        obj.update({k: v for k, v in self.extra.items() if k not in obj})
        return obj

    @classmethod
    def from_json(cls, obj: Any, base: Path) -> ManifestRecord:
        """Validate one parsed line; relative paths are resolved against ``base``. Raises ``ValueError``."""
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("id", "format", "paths", "split", "status") if k not in obj]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        if not isinstance(obj["id"], str) or not obj["id"]:
            raise ValueError("'id' must be a non-empty string")
        _check_choice("format", obj["format"], FORMATS)
        _check_choice("status", obj["status"], STATUSES)
        _check_choice("split", obj["split"], SPLITS)
        paths = obj["paths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise ValueError("'paths' must be a non-empty list of strings")
        reason = obj.get("reason")
        if obj["status"] == "rejected" and not isinstance(reason, str):
            raise ValueError("a rejected record needs a 'reason' string")
        return cls(
            id=obj["id"],
            format=obj["format"],
            paths=[Path(os.path.abspath(base / p)) for p in paths],
            modality=_optional(obj, "modality", str),
            shape=_tuple_or_none(obj, "shape", int),
            spacing=_tuple_or_none(obj, "spacing", float),
            split=obj["split"],
            status=obj["status"],
            reason=reason if isinstance(reason, str) else None,
            detail=str(obj.get("detail") or ""),
            nonfinite=_nonfinite(obj.get("nonfinite")),
            extra={k: v for k, v in obj.items() if k not in _FIELDS},
        )


def read_manifest(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> list[ManifestRecord]:
    """Read and validate a manifest.

    Args:
        path: the ``.jsonl`` file.
        root: folder that relative paths are relative to (default: the manifest's own folder).

    Raises:
        ManifestError: the file is missing, holds no records, or a line is invalid (the message names the
            line).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist (write one with 'medrecon prepare')")
    base = Path(os.path.abspath(root if root is not None else path.parent))
    records: list[ManifestRecord] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = ManifestRecord.from_json(json.loads(line), base)
            except ValueError as err:  # json.JSONDecodeError is a ValueError
                raise ManifestError(f"manifest {path}, line {lineno}: {err}") from err
            if record.id in seen:
                raise ManifestError(
                    f"manifest {path}, line {lineno}: id {record.id} repeats line {seen[record.id]}"
                )
            seen[record.id] = lineno
            records.append(record)
    if not records:
        raise ManifestError(f"manifest {path} holds no records")
    return records


def write_manifest(path: str | os.PathLike[str], records: list[ManifestRecord]) -> Path:
    """Write ``records`` atomically, paths relative to the manifest's folder when all lie inside it."""
    path = Path(path)
    base = Path(os.path.abspath(path.parent))
    relative = all(Path(os.path.abspath(p)).is_relative_to(base) for r in records for p in r.paths)
    lines = [json.dumps(r.to_json(base if relative else None)) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def _nonfinite(value: Any) -> NonFinite | None:
    try:
        return None if value is None else NonFinite.from_dict(value)
    except ValueError as err:
        raise ValueError(f"'nonfinite': {err}") from err


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name!r} is {value!r}; expected one of {', '.join(allowed)}")


def _optional(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{key!r} must be a {kind.__name__} or null, got {value!r}")
    return value


def _tuple_or_none(obj: dict[str, Any], key: str, kind: type) -> tuple[Any, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{key!r} must be a list of numbers or null, got {value!r}")
    if kind is int and not all(float(v).is_integer() for v in value):
        raise ValueError(f"{key!r} must hold whole numbers, got {value!r}")
    return tuple(kind(v) for v in value)
