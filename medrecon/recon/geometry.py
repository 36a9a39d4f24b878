"""Output grids: where the voxels of a reconstruction lie in the scanner's world (RAS mm).

Super-resolution by an integer factor ``s_a`` along array axis ``a`` splits every input voxel into ``s_a``
output voxels. Voxel *centres* sit at integer indices and a voxel spans ``index +- 0.5``, so output index
``n`` has its centre at input (continuous) index

    i = (n + 0.5) / s - 0.5 = n / s + (1 / s - 1) / 2

and the output affine is ``A_out = A_in @ T`` with ``T = diag(1/s_0, 1/s_1, 1/s_2, 1)`` and translation column
``((1/s_0 - 1)/2, (1/s_1 - 1)/2, (1/s_2 - 1)/2)``: voxel size divided by ``s`` along each axis, origin moved
by ``(1/s - 1)/2`` input voxels (a quarter of a voxel back for ``s = 2``) so the new voxels tile the old
ones. The bounding box (outer voxel faces, index ``-0.5`` to ``N - 0.5``) is unchanged: ``-0.5`` maps to
``-0.5`` and ``s N - 0.5`` to ``N - 0.5``. Denoising and MRI keep the input grid (``s = 1`` gives ``T = I``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def upsampled_affine(affine: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """The affine of a grid ``factors`` times finer along each array axis, covering the same box.

    Args:
        affine: 4x4 voxel -> RAS mm of the input grid.
        factors: three positive factors, one per array axis (1 keeps an axis).

    Returns:
        4x4 float64 voxel -> RAS mm of the output grid.
    """
    factors = np.asarray(factors, dtype=np.float64)
    if factors.shape != (3,) or np.any(factors <= 0):
        raise ValueError(
            f"need three positive upsampling factors (one per array axis), got {factors.tolist()}"
        )
    t = np.eye(4)
    t[:3, :3] = np.diag(1.0 / factors)
    t[:3, 3] = (1.0 / factors - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ t


def bounding_box(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates (8, 3) of the outer voxel-face corners ``(-0.5 | N - 0.5)`` of a grid."""
    corners = np.array(
        [[c[0], c[1], c[2], 1.0] for c in itertools.product(*[(-0.5, n - 0.5) for n in shape[:3]])]
    )
    return (np.asarray(affine, dtype=np.float64) @ corners.T).T[:, :3]


def in_plane_factors(scale: Sequence[int], slice_axis: int) -> tuple[int, int, int]:
    """Per-array-axis factors from a 2D task's ``scale`` (in-plane axes in order) and the slice axis."""
    scale = [int(s) for s in scale]
    if len(scale) != 2:
        raise ValueError(f"a 2D task's scale must have two entries, got {scale}")
    factors = [1, 1, 1]
    plane = [a for a in range(3) if a != slice_axis]
    for axis, s in zip(plane, scale):
        factors[axis] = s
    return factors[0], factors[1], factors[2]
