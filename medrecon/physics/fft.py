"""Centred orthonormal 2D Fourier transforms (fastMRI convention) and the mirror of centred k-space.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over two dimensions (the last two by default), so
the zero frequency sits at index ``n // 2`` of each axis and the transform is unitary:
``||fft2c(x)|| = ||x||``.
"""

from __future__ import annotations

import torch
from torch import Tensor

Dims = tuple[int, int]


def fft2c(x: Tensor, dim: Dims = (-2, -1)) -> Tensor:
    """Centred orthonormal 2D FFT.

    Args:
        x: complex (or real) tensor ``(..., H, W)``; ``dim`` picks the two transformed axes.
        dim: the two axes to transform.

    Returns:
        complex tensor of the same shape, zero frequency at ``(H // 2, W // 2)``.
    """
    x = torch.fft.ifftshift(x, dim=dim)
    x = torch.fft.fftn(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)


def ifft2c(k: Tensor, dim: Dims = (-2, -1)) -> Tensor:
    """Inverse of ``fft2c`` (and its adjoint, the transform being unitary)."""
    k = torch.fft.ifftshift(k, dim=dim)
    k = torch.fft.ifftn(k, dim=dim, norm="ortho")
    return torch.fft.fftshift(k, dim=dim)


def mirror(k: Tensor, dim: Dims = (-2, -1)) -> Tensor:
    """Reindex centred k-space ``k -> -k`` on the axes ``dim``.

    For a real image ``x``, ``fft2c(x) == mirror(fft2c(x)).conj()`` (Hermitian symmetry). With the centre at
    ``n // 2``, index ``j`` maps to ``(2 * (n // 2) - j) mod n``: a flip for odd ``n``, a flip rolled by one
    for even ``n`` (the Nyquist line maps to itself).
    """
    out = torch.flip(k, dims=dim)
    for d in dim:
        if k.shape[d] % 2 == 0:
            out = torch.roll(out, shifts=1, dims=d)
    return out
