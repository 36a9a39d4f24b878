"""The bundled sample scan (MNI ICBM152 2009a T1, see ``medrecon/assets/NOTICE.md``) and a demo archive.

``sample_volume(resolution_mm)`` prepares the 1 mm template for quick experiments:

1. crop: the bounding box of the non-zero voxels (the template is skull-stripped, so this is the brain) plus a
   ``MARGIN_MM`` margin on every side;
2. size: the box is enlarged symmetrically so that, after averaging ``f = resolution_mm`` voxels per axis, the
   two in-plane axes (i, j) have a multiple of ``IN_PLANE_MULTIPLE`` voxels (U-Nets halve them three times);
   voxels outside the template are zeros;
3. block-average ``f x f x f`` blocks (``skimage.measure.block_reduce``, mean);
4. affine: the new voxel ``(0, 0, 0)`` is the centre of the first block, i.e. the old voxel
   ``start + (f - 1) / 2`` per axis, and each axis is ``f`` times the old one. This is exact: the new voxel
   centres are the means of the old centres they average.

``materialise_demo_archive(out_dir)`` writes that volume twice: as an MR DICOM series with a synthetic header
(``dicom/mni_t1/slice_0001.dcm ...``; PatientName ``Anonymous^Demo``, PatientID ``DEMO``; UIDs derived from
a fixed seed so the same resolution always gives the same UIDs and therefore the same manifest ids) and as
``nifti/mni_t1.nii.gz``.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import block_reduce

from medrecon.io.dicom_write import write_dicom_series
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.volume import Volume

TEMPLATE_FILE = "mni_icbm152_t1_09a.nii.gz"
TEMPLATE_MM = 1.0
MARGIN_MM = 4.0
IN_PLANE_MULTIPLE = 8
RESOLUTIONS_MM = (1, 2, 3, 4)
DEMO_SERIES_FOLDER = "mni_t1"
DEMO_NIFTI = "mni_t1.nii.gz"


@dataclass(frozen=True)
class DemoArchive:
    """What ``materialise_demo_archive`` wrote (absolute paths)."""

    root: Path
    dicom_dir: Path
    dicom_files: list[Path]
    nifti: Path


def template_volume() -> Volume:
    """The bundled template as read: float32 ``(197, 233, 189)``, 0..255, 1 mm, MNI-space affine."""
    with importlib.resources.as_file(
        importlib.resources.files("medrecon") / "assets" / TEMPLATE_FILE
    ) as path:
        volume = read_nifti(path)
    volume.meta.update(modality="MR", description="MNI ICBM152 2009a nonlinear symmetric T1 template")
    return volume


def sample_volume(resolution_mm: float = 2.0) -> Volume:
    """The template cropped to the brain and block-averaged to ``resolution_mm`` (see the module docstring).

    Args:
        resolution_mm: output voxel size, a whole number of millimetres: 1, 2, 3 or 4.

    Returns:
        ``Volume`` float32 ``(I, J, K)`` with ``I`` and ``J`` multiples of 8 (e.g. ``(80, 96, 82)`` at 2 mm),
        intensities 0..255, isotropic ``resolution_mm`` spacing, RAS (MNI) affine;
        ``meta["modality"] = "MR"``.
    """
    factor = _factor(resolution_mm)
    template = template_volume()
    array = template.array
    nonzero = np.argwhere(array > 0)
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0) + 1
    margin = int(round(MARGIN_MM / TEMPLATE_MM))
    starts, sizes = [], []
    for axis in range(3):
        extent = int(hi[axis] - lo[axis]) + 2 * margin
        count = math.ceil(extent / factor)
        if axis < 2:
            count = IN_PLANE_MULTIPLE * math.ceil(count / IN_PLANE_MULTIPLE)
        size = count * factor
        start = int(lo[axis]) - margin - (size - extent) // 2
        # stay inside the template when the box fits, so as few zero voxels as possible are invented
        if size <= array.shape[axis]:
            start = min(max(start, 0), array.shape[axis] - size)
        starts.append(start)
        sizes.append(size)
    region = _extract(array, starts, sizes)
    reduced = block_reduce(region, (factor, factor, factor), np.mean).astype(np.float32)
    affine = template.affine.copy()
    affine[:3, 3] = (template.affine @ np.array([s + (factor - 1) / 2 for s in starts] + [1.0]))[:3]
    affine[:3, :3] = template.affine[:3, :3] * factor
    meta = dict(template.meta)
    meta["spacing"] = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return Volume(array=np.ascontiguousarray(reduced), affine=affine, meta=meta)


def materialise_demo_archive(out_dir: str | Path, resolution_mm: float = 2.0) -> DemoArchive:
    """Write ``out_dir/dicom/mni_t1/slice_*.dcm`` and ``out_dir/nifti/mni_t1.nii.gz`` (``sample_volume``)."""
    factor = _factor(resolution_mm)
    root = Path(out_dir).absolute()
    volume = sample_volume(factor)
    dicom_dir = root / "dicom" / DEMO_SERIES_FOLDER
    files = write_dicom_series(
        volume,
        dicom_dir,
        series_description=f"MNI ICBM152 2009a T1 demo {factor} mm",
        modality="MR",
        series_number=1,
        derived=False,
        patient_name="Anonymous^Demo",
        patient_id="DEMO",
        uid_seed=f"medrecon-demo-mni-icbm152-2009a-t1-{factor}mm",
    )
    nifti = write_nifti(volume, root / "nifti" / DEMO_NIFTI)
    return DemoArchive(root=root, dicom_dir=dicom_dir, dicom_files=files, nifti=nifti)


def run(cfg: Any) -> int:
    """``medrecon sample-data out=DIR [resolution_mm=2]``."""
    from medrecon.errors import UsageError
    from medrecon.prepare import required

    out = required(cfg, "out", "the folder to write the demo archive into")
    try:
        factor = _factor(cfg.resolution_mm)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err
    archive = materialise_demo_archive(Path(out).expanduser(), factor)
    print(f"DICOM series ({len(archive.dicom_files)} slices): {archive.dicom_dir}")
    print(f"NIfTI volume: {archive.nifti}")
    print(f"next: medrecon prepare input={archive.root} manifest={archive.root / 'manifest.jsonl'}")
    return 0


def _factor(resolution_mm: Any) -> int:
    try:
        value = float(resolution_mm)
    except (TypeError, ValueError):
        value = float("nan")
    if not value.is_integer() or int(value) not in RESOLUTIONS_MM:
        raise ValueError(
            f"resolution_mm={resolution_mm}: the template is 1 mm, so choose one of "
            f"{', '.join(str(r) for r in RESOLUTIONS_MM)}"
        )
    return int(value)


def _extract(array: np.ndarray, starts: list[int], sizes: list[int]) -> np.ndarray:
    """``array[start:start+size]`` per axis, zero-padded where the box leaves the array."""
    pad, index = [], []
    for start, size, n in zip(starts, sizes, array.shape):
        before, after = max(0, -start), max(0, start + size - n)
        pad.append((before, after))
        index.append(slice(start + before, start + size - after))
    return np.pad(array[tuple(index)], pad)
