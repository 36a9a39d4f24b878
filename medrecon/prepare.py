"""``medrecon prepare input=DIR manifest=FILE.jsonl``: scan an archive (headers only) and write its manifest.

Every volume found gets one record (ok, or rejected with a reason); every file that could not become part of a
volume gets one rejected record too, so the manifest accounts for the whole archive. Rejections are results,
not failures: the exit code is 0 unless the command was used wrongly (missing input folder, bad split
fractions: ``UsageError``, exit code 2).

Splits are deterministic: an item's split depends only on its group key, the seed and the fractions.
``u = sha256(seed, key)`` read as a number in [0, 1) falls into ``[0, train)`` -> train,
``[train, train+val)`` -> val, else test. With ``split.by=patient`` (default) the key is a one-way hash of the
DICOM PatientID (else StudyInstanceUID; fastMRI's ``patient_id`` attribute for HDF5), so one patient's series
never straddle train and test; items without patient information (NIfTI) fall back to their own id.
``split.by=item`` uses the id for everything. The hash is used only in memory; it is not written out.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medrecon.errors import UsageError
from medrecon.io.archive import Item, discover
from medrecon.manifest import SPLITS, ManifestRecord, write_manifest

SPLIT_BY = ("patient", "item")


def required(cfg: Any, key: str, what: str) -> str:
    """``cfg[key]`` as a string; ``UsageError`` naming the option when it was not given (``???``)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise UsageError(f"{key}= is required ({what})")
    return str(cfg[key])


def assign_split(key: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """``train``/``val``/``test`` for ``key`` from ``sha256(seed, key)`` against the cumulative fractions."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for name in SPLITS[:-1]:
        edge += float(fractions[name])
        if u < edge:
            return name
    return SPLITS[-1]


def check_fractions(split: Mapping[str, Any]) -> dict[str, float]:
    """Validate ``split.train/val/test`` (each >= 0, sum 1); raises ``UsageError`` naming the values."""
    try:
        fractions = {name: float(split[name]) for name in SPLITS}
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"split.train, split.val and split.test must be numbers ({err})") from err
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or abs(total - 1.0) > 1e-6:
        shown = ", ".join(f"split.{k}={v:g}" for k, v in fractions.items())
        raise UsageError(
            f"{shown}: each fraction must be >= 0 and together they must sum to 1 (sum {total:g})"
        )
    return fractions


def build_records(
    items: list[Item], fractions: Mapping[str, float], seed: int, by: str
) -> list[ManifestRecord]:
    """Manifest records for discovered items, with their splits."""
    return [
        ManifestRecord(
            id=item.id,
            format=item.format,
            paths=list(item.paths),
            modality=item.modality,
            shape=item.shape,
            spacing=item.spacing,
            split=assign_split(item.group if by == "patient" else item.id, fractions, seed),
            status=item.status,
            reason=item.reason,
            detail=item.detail,
            nonfinite=item.nonfinite,
        )
        for item in items
    ]


def summary_table(records: list[ManifestRecord]) -> str:
    """A plain-text table: counts per (format, status, reason), then the ok items per split."""
    counts = Counter((r.format, r.status, r.reason or "-") for r in records)
    rows = [("format", "status", "reason", "count")]
    rows += [(f, s, r, str(n)) for (f, s, r), n in sorted(counts.items())]
    rows.append(("all", "", "", str(len(records))))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = [
        "  ".join(cell.ljust(w) if c < 3 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ok = Counter(r.split for r in records if r.ok)
    lines.append("ok per split: " + ", ".join(f"{s} {ok.get(s, 0)}" for s in SPLITS))
    with_nan = [r for r in records if r.ok and r.nonfinite is not None and r.nonfinite.nan]
    if with_nan:
        voxels = sum(r.nonfinite.nan for r in with_nan)  # type: ignore[union-attr]
        lines.append(
            f"NaN voxels: {voxels} in {len(with_nan)} ok item(s), read as each volume's background value "
            "(docs/data-formats.md)"
        )
    return "\n".join(lines)


class FileBar:
    """A tqdm bar over the files ``discover`` examines (files/s, ETA), created once the folder walk has counted
    them (``reset(total=N)``); on stderr, so stdout keeps the summary alone. A no-op when not ``enabled``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def reset(self, total: int | None = None) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(total=total, desc="prepare", unit="file", dynamic_ncols=True)

    def update(self, n: float | None = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(cfg: Any) -> int:
    """Discover ``cfg.input``, write ``cfg.manifest``, print a summary; 0 unless the options are wrong."""
    root = Path(os.path.expanduser(required(cfg, "input", "the archive folder")))
    manifest = Path(os.path.expanduser(required(cfg, "manifest", "the JSONL file to write")))
    if not root.is_dir():
        raise UsageError(f"input={cfg.input}: no such folder")
    if manifest.is_dir():
        raise UsageError(f"manifest={cfg.manifest} is a folder; give a file name such as manifest.jsonl")
    fractions = check_fractions(cfg.split)
    by = str(cfg.split.get("by", "patient"))
    if by not in SPLIT_BY:
        raise UsageError(f"split.by={by}: expected one of {', '.join(SPLIT_BY)}")
    try:
        seed = int(cfg.split.seed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"split.seed={cfg.split.seed}: expected an integer") from err

    show = cfg.get("progress", True)
    if not isinstance(show, bool):
        raise UsageError(f"progress={show!r} must be true or false")
    bar = FileBar(show)
    try:
        found = discover(root, exclude=[manifest], progress=bar)
    finally:
        bar.close()
    records = build_records(found.items, fractions, seed, by)
    write_manifest(manifest, records)
    print(summary_table(records))
    print(f"manifest: {manifest} ({len(found.ok)} ok, {len(found.rejected)} rejected)")
    return 0
