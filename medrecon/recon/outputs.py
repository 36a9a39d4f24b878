"""Where an item's outputs go, and writing them so that a kill never leaves a half-written one.

Names are built only from the item's opaque id (``[A-Za-z0-9][A-Za-z0-9._-]*``, never tag text), and every
path is resolved and checked to lie inside the output folder before anything is written:

- ``<out>/<id>.nii.gz``          the reconstruction (float32, scanner units, output-grid affine);
- ``<out>/<id>_std.nii.gz``      the per-voxel posterior standard deviation (``samples > 1``);
- ``<out>/dicom/<id>/``          a derived DICOM series (DICOM inputs), written into a hidden temporary folder
                                 beside it and renamed into place when complete;
- ``<out>/fastmri/<file name>``  a fastMRI-format ``reconstruction`` file (k-space reconstructions of fastMRI
                                 ``.h5`` inputs, ``fastmri_output=true``; ``medrecon.io.fastmri_out``). It is
                                 the one name taken from the input rather than the id: fastMRI's evaluation
                                 pairs a reconstruction with its target file by name. Only the final
                                 component of the input path is used, and it must be a plain file name.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import UsageError
from medrecon.volume import Volume

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


@dataclass(frozen=True)
class ItemOutputs:
    """The output paths of one item (absolute)."""

    out: Path
    nifti: Path
    std: Path
    dicom: Path
    fastmri: Path | None = None  # the fastMRI-format file, for items that write one

    def relative(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, or ValueError when it escapes ``root`` (symlinks and ``..`` included)."""
    root_r, path_r = root.resolve(), path.resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ValueError(f"output path {path} would lie outside the output folder {root}")
    return path_r


def item_outputs(out: Path, item_id: str, fastmri_from: str | Path | None = None) -> ItemOutputs:
    """The output paths for ``item_id`` inside ``out``; ValueError for an id that is not a safe name.

    ``fastmri_from``: the input file whose name the item's fastMRI-format output takes (see
    :func:`fastmri_source`); ValueError when that name is not a plain file name.
    """
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
        fastmri=None if fastmri_from is None else inside(out, out / "fastmri" / _plain_name(fastmri_from)),
    )


def _plain_name(source: str | Path) -> str:
    name = Path(source).name
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            "the input's file name is not a plain name ([A-Za-z0-9._-], not starting with '.'), "
            "so no fastMRI-format output can carry it"
        )
    return name


def fastmri_enabled(cfg: Any) -> bool:
    """``fastmri_output=true|false`` (default true); anything else is a usage error."""
    value = cfg.get("fastmri_output", True)
    if not isinstance(value, bool):
        raise UsageError(f"fastmri_output={value!r} must be true or false")
    return value


def fastmri_source(item: Any, task: Any, enabled: bool) -> Path | None:
    """The input file whose name the item's fastMRI-format output takes, or ``None`` when it writes none.

    Only k-space reconstructions write one: an ok ``h5`` item under an MRI task, with ``fastmri_output=true``.
    """
    from medrecon.recon.measure import is_mri

    if not enabled or item.format != "h5" or not item.paths or not is_mri(task):
        return None
    if getattr(item, "status", "ok") != "ok":  # a rejected input writes nothing
        return None
    return Path(item.paths[0])


def check_fastmri_names(sources: Sequence[Path | None]) -> None:
    """Refuse a run in which two inputs would write the same fastMRI-format file (the same file name from
    different folders): one would overwrite the other.

    Raises:
        UsageError: one line, without the names (folder and file names may carry patient data).
    """
    names = [Path(s).name for s in sources if s is not None]
    clashes = len(names) - len(set(names))
    if clashes:
        raise UsageError(
            f"{clashes} fastMRI input(s) share a file name with another input; fastMRI-format outputs are "
            "named after the input file: reconstruct them into separate out= folders, or set "
            "fastmri_output=false"
        )


def fastmri_recorded(source: Path | None, recorded: Sequence[str]) -> bool:
    """True when an earlier run's outputs include the fastMRI-format file this run would write for the input
    ``source`` (:func:`fastmri_source`; ``None``: none is due), so an item done before the option existed (or
    with it off) is redone rather than skipped."""
    return source is None or f"fastmri/{Path(source).name}" in recorded


def write_fastmri_atomic(array: np.ndarray, source: Path, dest: Path) -> Path:
    """Write a k-space reconstruction as fastMRI stores it.

    Args:
        array: the reconstruction ``(W, H, slices)`` as written to NIfTI (``kspace_volume``'s axes), in the
            file's intensity units.
        source: the fastMRI input file (its header gives the crop: ``medrecon.io.fastmri_out.recon_crop``).
        dest: the output path (:attr:`ItemOutputs.fastmri`), replaced atomically.
    """
    from medrecon.io.fastmri_out import fastmri_reconstruction, write_fastmri_reconstruction
    from medrecon.io.kspace_h5 import inspect_kspace_h5

    slices = np.transpose(np.asarray(array), (2, 1, 0))  # (W, H, slices) -> (slices, H, W)
    return write_fastmri_reconstruction(dest, fastmri_reconstruction(slices, inspect_kspace_h5(source)))


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
    """Delete an item's outputs (its NIfTI, uncertainty map, fastMRI file and derived DICOM folder), e.g.
    after writing one of them failed: a failed item keeps no output, partial or stale."""
    paths.nifti.unlink(missing_ok=True)
    paths.std.unlink(missing_ok=True)
    if paths.fastmri is not None:
        paths.fastmri.unlink(missing_ok=True)
    if paths.dicom.is_dir():
        shutil.rmtree(paths.dicom, ignore_errors=True)
