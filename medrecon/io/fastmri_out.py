"""fastMRI-format reconstruction files: what fastMRI's evaluation script and leaderboard read.

fastMRI (facebookresearch/fastMRI: ``fastmri/utils.py`` ``save_reconstructions``, ``fastmri/evaluate.py``)
expects one HDF5 file per input volume, named like the input file, holding one dataset ``reconstruction``
``(slices, h, w)`` float32: magnitude images on the ground truth's grid, i.e. the inverse-FFT grid ``(H, W)``
(readout ``H`` usually 2x oversampled) centre-cropped to the reconstruction size. Its evaluation reads
``reconstruction`` from the file of the same name as the target file and compares after a centre crop.

Crop size (``recon_crop``), chosen as fastMRI's data transforms choose it: the ground truth's ``(h, w)``
when the file has one (``reconstruction_rss`` / ``reconstruction_esc``), else the ISMRMRD header's reconSpace
matrix size ``(x, y)`` (fastMRI's ``recon_size``), else no crop. When the k-space is narrower than that width
(fastMRI's "FLAIR 203" case) the crop is ``(W, W)``; a crop still larger than the grid is clipped to it.
Centre crops start at ``(n - size) // 2`` on each axis, as fastMRI's ``center_crop``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from medrecon.io.atomic import atomic_path
from medrecon.io.kspace_h5 import KSpaceInfo

DATASET = "reconstruction"


def center_crop(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centre ``shape`` of the last two axes of ``data`` (``(..., H, W)`` -> ``(..., h, w)``).

    Raises:
        ValueError: ``shape`` is not positive or larger than the array's last two axes.
    """
    h, w = int(shape[0]), int(shape[1])
    rows, cols = data.shape[-2], data.shape[-1]
    if not (0 < h <= rows and 0 < w <= cols):
        raise ValueError(f"cannot centre-crop an array of shape {data.shape} to ({h}, {w})")
    top, left = (rows - h) // 2, (cols - w) // 2
    return data[..., top : top + h, left : left + w]


def recon_crop(info: KSpaceInfo, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(h, w)`` a reconstruction of this file is cropped to (see the module docstring).

    Args:
        info: the file's description (``inspect_kspace_h5``).
        grid: the reconstruction's ``(H, W)``; default the k-space's last two axes.
    """
    rows, cols = grid if grid is not None else (info.kspace_shape[-2], info.kspace_shape[-1])
    if info.target_shape is not None:
        h, w = info.target_shape[1], info.target_shape[2]
    elif info.recon_matrix is not None:
        h, w = info.recon_matrix[0], info.recon_matrix[1]
    else:
        return (rows, cols)
    if cols < w:  # fastMRI's data transforms: a narrower k-space is cropped square to its width
        h, w = cols, cols
    return (min(h, rows), min(w, cols))


def fastmri_reconstruction(slices: np.ndarray, info: KSpaceInfo) -> np.ndarray:
    """A reconstruction ``(slices, H, W)`` on the k-space grid as fastMRI stores it: float32, centre-cropped
    to :func:`recon_crop`, ``(slices, h, w)``."""
    if slices.ndim != 3:
        raise ValueError(f"a fastMRI reconstruction is (slices, H, W), got shape {slices.shape}")
    crop = recon_crop(info, (slices.shape[1], slices.shape[2]))
    return np.ascontiguousarray(center_crop(slices, crop), dtype=np.float32)


def write_fastmri_reconstruction(dest: str | Path, reconstruction: np.ndarray) -> Path:
    """Write ``reconstruction`` ``(slices, h, w)`` as the dataset ``reconstruction`` of a new HDF5 file,
    atomically (a temporary file beside ``dest``, renamed onto it; an existing file is replaced)."""
    array = np.asarray(reconstruction, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"a fastMRI reconstruction is (slices, h, w), got shape {array.shape}")
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(DATASET, data=array)
    return dest


def read_fastmri_reconstruction(path: str | Path) -> np.ndarray:
    """The ``reconstruction`` dataset of a fastMRI-format output file, float32 ``(slices, h, w)``."""
    with h5py.File(path, "r") as f:
        if DATASET not in f:
            raise ValueError(f"no {DATASET!r} dataset: not a fastMRI reconstruction file")
        return np.asarray(f[DATASET][()], dtype=np.float32)
