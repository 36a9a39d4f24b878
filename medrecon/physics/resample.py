"""Block averaging (the area-downsampling operator), its adjoint, and interpolation back to the fine grid."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def check_divisible(shape: tuple[int, ...], factors: tuple[int, ...]) -> None:
    """Raise ValueError unless every spatial size in ``shape`` ``(*S)`` is divisible by its factor."""
    bad = [(n, f) for n, f in zip(shape, factors) if n % f]
    if bad:
        raise ValueError(
            f"spatial size {tuple(shape)} is not divisible by the downsampling factors {tuple(factors)}; "
            "crop or pad the image to a multiple of the factor"
        )


def block_mean(x: Tensor, factors: tuple[int, ...]) -> Tensor:
    """Average non-overlapping blocks: ``(B, C, *S) -> (B, C, *(S_i / f_i))``.

    This is area (box-filter) downsampling, the anti-aliased operator that integrates each coarse voxel's
    footprint; ``factors`` has one integer per spatial axis (1 leaves an axis untouched).
    """
    spatial = tuple(x.shape[2:])
    check_divisible(spatial, factors)
    shape: list[int] = list(x.shape[:2])
    for n, f in zip(spatial, factors):
        shape += [n // f, f]
    block_axes = tuple(3 + 2 * i for i in range(len(spatial)))
    return x.reshape(shape).mean(dim=block_axes)


def block_mean_adjoint(y: Tensor, factors: tuple[int, ...]) -> Tensor:
    """The adjoint of ``block_mean``: nearest-neighbour upsampling divided by ``prod(factors)``."""
    out = y
    for i, f in enumerate(factors):
        if f > 1:
            out = out.repeat_interleave(f, dim=2 + i)
    return out / math.prod(factors)


def interpolate_to(y: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bicubic (2D) or trilinear (3D) interpolation to ``size`` with ``align_corners=False``.

    With ``align_corners=False`` a coarse voxel's centre lands at the centre of the fine block it averages, so
    the interpolant is aligned with ``block_mean``.
    """
    mode = "bicubic" if len(size) == 2 else "trilinear"
    return F.interpolate(y, size=tuple(size), mode=mode, align_corners=False)
