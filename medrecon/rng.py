"""Seeded noise shared by the physics (degradations) and the diffusion samplers.

``Generators`` is how callers inject randomness: ``None`` (the global RNG), one ``torch.Generator`` for the
whole batch, or a list with one generator per batch item. With a list, item ``b``'s draws come from its own
generator only, so a sample is reproducible from its seed whatever batch it was computed in. Draws happen on the
generator's own device and are then moved, so a CPU generator seeds CUDA work with the same numbers as on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


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
