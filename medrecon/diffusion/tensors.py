"""Small tensor helpers shared by the diffusion modules: broadcasting per-sample scalars and seeded noise.

``Generators`` is how callers inject randomness: ``None`` (the global RNG), one ``torch.Generator`` for the
whole batch, or a list with one generator per batch item. With a list, item ``b``'s draws come from its own
generator only, so a sample is reproducible from its seed whatever batch it was computed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


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


def _draw(
    fn: Callable[..., Tensor],
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str,
    dtype: torch.dtype,
) -> Tensor:
    shape = tuple(int(s) for s in shape)
    if generator is None:
        return fn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        # draw on the generator's device, then move: a CPU generator then gives the same numbers on any device
        return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; pass one per item")
    rows = [fn(shape[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in generators]
    return torch.stack(rows)


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape``; a generator list draws row ``b`` from ``generator[b]``."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform [0, 1) noise of ``shape``; a generator list draws row ``b`` from ``generator[b]``."""
    return _draw(torch.rand, shape, generator, device, dtype)


def randn_like(x: Tensor, generator: Generators = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (same device and dtype), drawn as :func:`randn` does."""
    return randn(x.shape, generator, x.device, x.dtype)
