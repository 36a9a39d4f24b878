"""Coil sensitivity maps: smooth simulated maps for synthetic multi-coil data, and a low-resolution estimate
from the fully sampled k-space centre for measured data.

Both are normalised so that ``sum_c |S_c|^2 = 1`` (wherever the estimate has signal), which makes the
coil-combined adjoint ``sum_c conj(S_c) ifft2c(k_c)`` an exact inverse of fully sampled multi-coil data.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from medrecon.physics.fft import ifft2c


@lru_cache(maxsize=16)
def _simulated(coils: int, height: int, width: int) -> Tensor:
    rows = (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2 - 1
    cols = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    angles = 2 * math.pi * torch.arange(coils, dtype=torch.float64) / coils
    radius, width_g = 1.3, 0.9  # coil centres just outside the field of view; Gaussian profile width
    maps = []
    for a in angles.tolist():
        pr, pc = radius * math.sin(a), radius * math.cos(a)
        magnitude = torch.exp(-((r - pr) ** 2 + (c - pc) ** 2) / (2 * width_g**2))
        # a coil-specific constant phase plus a gentle ramp along the coil's direction
        phase = a + 0.5 * math.pi * (r * math.sin(a) + c * math.cos(a))
        maps.append(torch.polar(magnitude, phase))
    maps = torch.stack(maps)
    return (maps / maps.abs().pow(2).sum(0).sqrt()).to(torch.complex64)


def simulate_coil_maps(
    coils: int,
    shape: tuple[int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.complex64,
) -> Tensor:
    """Smooth, deterministic sensitivity maps of ``coils`` Gaussian-profile coils on a ring around the FOV.

    Coil ``c`` sits at angle ``2 pi c / coils`` on a circle of radius 1.3 (the FOV spans ``[-1, 1]``), with a
    Gaussian magnitude profile (width 0.9) and a coil-specific smooth phase. Maps are normalised so that
    ``sum_c |S_c|^2 = 1`` at every pixel.

    Args:
        coils: number of coils (>= 1).
        shape: in-plane size ``(H, W)``.
        device: where the maps are returned.
        dtype: complex64 or complex128.

    Returns:
        ``(coils, H, W)`` complex maps.
    """
    if coils < 1:
        raise ValueError(f"coils must be >= 1, got {coils!r}")
    # a copy, so callers may modify their maps without touching the cache
    return _simulated(int(coils), int(shape[0]), int(shape[1])).to(device=device, dtype=dtype, copy=True)


def estimate_coil_maps(kspace: Tensor, center_mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Estimate sensitivity maps from the fully sampled centre of multi-coil k-space.

    The low-resolution coil images ``l_c = ifft2c(kspace_c * centre)`` are divided by their root sum of
    squares (the map estimate of E2E-VarNet's initialisation, without the learned refinement). Pixels where
    the root-sum-of-squares is below ``eps`` times its maximum get zero maps.

    Args:
        kspace: ``(B, coils, H, W)`` centred complex k-space.
        center_mask: ``(W,)`` (or broadcastable) 0/1 mask of the fully sampled centre lines.
        eps: relative threshold of the support.

    Returns:
        ``(B, coils, H, W)`` complex maps with ``sum_c |S_c|^2 = 1`` on the support.
    """
    low = ifft2c(kspace * center_mask.to(kspace.real.dtype))
    rss = low.abs().pow(2).sum(1, keepdim=True).sqrt()
    floor = eps * rss.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(rss.dtype).tiny)
    return torch.where(rss > floor, low / rss.clamp_min(torch.finfo(rss.dtype).tiny), torch.zeros_like(low))
