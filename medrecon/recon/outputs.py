"""Where an item's outputs go, and writing them so that a kill never leaves a half-written one.

Names are built only from the item's opaque id (``[A-Za-z0-9][A-Za-z0-9._-]*``, never tag text), and every
path is resolved and checked to lie inside the output folder before anything is written:

- ``<out>/<id>.nii.gz``          the reconstruction (float32, scanner units, output-grid affine);
- ``<out>/<id>_std.nii.gz``      the per-voxel posterior standard deviation (``samples > 1``);
- ``<out>/dicom/<id>/``          a derived DICOM series (DICOM inputs), written into a hidden temporary folder
                                 beside it and renamed into place when complete.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medrecon.volume import Volume

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ItemOutputs:
    """The output paths of one item (absolute)."""

    out: Path
    nifti: Path
    std: Path
    dicom: Path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, or ValueError when it escapes ``root`` (symlinks and ``..`` included)."""
    root_r, path_r = root.resolve(), path.resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ValueError(f"output path {path} would lie outside the output folder {root}")
    return path_r


def item_outputs(out: Path, item_id: str) -> ItemOutputs:
    """The output paths for ``item_id`` inside ``out``; ValueError for an id that is not a safe name."""
    if not _ID_PATTERN.fullmatch(item_id) or ".." in item_id:
        raise ValueError(
            f"item id {item_id!r} is not an opaque name ([A-Za-z0-9._-], at most 128 characters)"
        )
    out = Path(out).resolve()
    return ItemOutputs(
        out=out,
        nifti=inside(out, out / f"{item_id}.nii.gz"),
        std=inside(out, out / f"{item_id}_std.nii.gz"),
        dicom=inside(out, out / "dicom" / item_id),
    )


def outputs_present(out: Path, relative: list[str]) -> bool:
    """True when every recorded output (relative to ``out``) exists (a DICOM folder must hold files)."""
    if not relative:
        return False
    for rel in relative:
        try:
            path = inside(Path(out), Path(out) / rel)
        except ValueError:
            return False
        if path.is_dir():
            if not any(path.iterdir()):
                return False
        elif not path.is_file():
            return False
    return True


def write_dicom_atomic(
    volume: Volume,
    dest: Path,
    *,
    source: Volume,
    series_description: str,
    source_header: Path | None = None,
    identity: str = "source",
) -> list[Path]:
    """Write a derived series into a temporary folder beside ``dest``, then rename it onto ``dest``.

    ``source_header`` (a file of the source series) and ``identity`` (``source`` | ``empty``) decide the
    patient and study attributes (:mod:`medrecon.io.dicom_identity`). An existing ``dest`` (a failed or
    outdated earlier attempt) is replaced.
    """
    from medrecon.io.dicom_write import write_dicom_series

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write_dicom_series(
            volume,
            tmp,
            series_description=series_description,
            source=source,
            source_header=source_header,
            identity=identity,
            derived=True,
        )
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(p for p in dest.rglob("*") if p.is_file())


def remove_outputs(paths: ItemOutputs) -> None:
    """Delete an item's outputs (its NIfTI, uncertainty map and derived DICOM folder), e.g. after writing one
    of them failed: a failed item keeps no output, partial or stale."""
    paths.nifti.unlink(missing_ok=True)
    paths.std.unlink(missing_ok=True)
    if paths.dicom.is_dir():
        shutil.rmtree(paths.dicom, ignore_errors=True)
