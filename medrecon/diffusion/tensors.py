"""Small tensor helpers shared by the diffusion modules: broadcasting per-sample scalars and seeded noise.

``Generators`` is how callers inject randomness: ``None`` (the global RNG), one ``torch.Generator`` for the
whole batch, or a list with one generator per batch item. With a list, item ``b``'s draws come from its own
generator only, so a sample is reproducible from its seed whatever batch it was computed in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medrecon.rng import Generators, rand, randn

__all__ = ["Generators", "append_dims", "rand", "randn", "randn_like", "sigma_batch"]


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions until ``x`` has ``ndim`` dims: ``(B,)`` -> ``(B, 1, 1, 1)``."""
    missing = ndim - x.ndim
    if missing < 0:
        raise ValueError(f"cannot broadcast a {x.ndim}-dim tensor to {ndim} dims")
    return x.reshape(*x.shape, *([1] * missing))


def sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """``sigma`` (scalar or (B,)) as a float32 ``(B,)`` tensor on ``x``'s device."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
    if sigma.numel() == 1:
        return sigma.expand(x.shape[0])
    if sigma.shape[0] != x.shape[0]:
        raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {x.shape[0]}")
    return sigma


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (same device and dtype), drawn as :func:`randn` does."""
    return randn(x.shape, generator, x.device, x.dtype)
