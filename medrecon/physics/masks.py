"""Cartesian 1D undersampling masks with fastMRI semantics (``fastmri/data/subsample.py``).

A mask selects phase-encode lines (columns of centred k-space). Both functions keep a fully sampled block of
``num_low = round(num_cols * center_fraction)`` (at least 1) centre lines, placed like fastMRI's
(``pad = (num_cols - num_low + 1) // 2``, so the zero frequency ``num_cols // 2`` is always sampled), and draw
the other lines so that the *total* number of lines is exactly
``max(num_low, round(num_cols / acceleration))``:

- ``RandomMaskFunc``: the outer lines are a uniformly random subset of that size. Every outer line has
  fastMRI's probability ``(num_cols / R - num_low) / (num_cols - num_low)``; unlike fastMRI's independent coin
  flips, the count is fixed, so the acceleration is exact for every draw (not only in expectation).
- ``EquispacedMaskFunc``: the outer lines are equispaced over the non-centre lines with a random offset (the
  spacing is ``(num_cols - num_low) / (lines - num_low)``, rounded down per line), the fixed-count counterpart
  of fastMRI's ``EquispacedMaskFractionFunc``.

Both are reproducible from a ``torch.Generator``.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor

from medrecon.physics.base import rand


class MaskFunc(abc.ABC):
    """Common part: centre block and line budget.

    Args:
        center_fraction: fraction of the columns in the fully sampled centre, in ``(0, 1)``.
        acceleration: the undersampling factor ``R >= 1`` (total lines ``= round(num_cols / R)``).
    """

    def __init__(self, center_fraction: float, acceleration: float) -> None:
        if not 0.0 < center_fraction < 1.0:
            raise ValueError(f"center_fraction must be in (0, 1), got {center_fraction!r}")
        if not acceleration >= 1.0:
            raise ValueError(f"acceleration must be >= 1, got {acceleration!r}")
        self.center_fraction = float(center_fraction)
        self.acceleration = float(acceleration)

    def num_low_frequencies(self, num_cols: int) -> int:
        """The number of fully sampled centre lines."""
        return min(num_cols, max(1, round(num_cols * self.center_fraction)))

    def num_lines(self, num_cols: int) -> int:
        """The total number of sampled lines."""
        return max(self.num_low_frequencies(num_cols), min(num_cols, round(num_cols / self.acceleration)))

    def center_mask(self, num_cols: int, device: torch.device | str = "cpu") -> Tensor:
        """Boolean ``(num_cols,)`` mask of the fully sampled centre block."""
        num_low = self.num_low_frequencies(num_cols)
        pad = (num_cols - num_low + 1) // 2
        mask = torch.zeros(num_cols, dtype=torch.bool, device=device)
        mask[pad : pad + num_low] = True
        return mask

    def __call__(
        self, num_cols: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Draw one mask.

        Args:
            num_cols: the number of phase-encode lines ``W``.
            generator: the random source (the draw is reproducible from its seed).
            device: where the mask is returned.

        Returns:
            float32 ``(num_cols,)`` with values 0/1.
        """
        if num_cols < 1:
            raise ValueError(f"num_cols must be >= 1, got {num_cols!r}")
        mask = self.center_mask(num_cols, device)
        outer = torch.nonzero(~mask).flatten()
        k = self.num_lines(num_cols) - int(mask.sum())
        if k > 0:
            mask[outer[self._pick(len(outer), k, generator).to(outer.device)]] = True
        return mask.to(torch.float32)

    @abc.abstractmethod
    def _pick(self, n: int, k: int, generator: torch.Generator | None) -> Tensor:
        """Indices of ``k`` of ``n`` outer lines."""


class RandomMaskFunc(MaskFunc):
    """Centre block plus a uniformly random, fixed-size set of outer lines (see the module docstring)."""

    def _pick(self, n: int, k: int, generator: torch.Generator | None) -> Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randperm(n, generator=generator, device=gen_device)[:k]


class EquispacedMaskFunc(MaskFunc):
    """Centre block plus equispaced outer lines with a random offset (see the module docstring)."""

    def _pick(self, n: int, k: int, generator: torch.Generator | None) -> Tensor:
        step = n / k
        offset = float(rand((1,), generator, "cpu")) * step
        idx = [min(n - 1, math.floor(offset + i * step)) for i in range(k)]
        return torch.tensor(idx, dtype=torch.long)


MASK_TYPES: dict[str, type[MaskFunc]] = {"random": RandomMaskFunc, "equispaced": EquispacedMaskFunc}


def make_mask_func(mask_type: str, center_fraction: float, acceleration: float) -> MaskFunc:
    """The mask function named ``mask_type`` (``random`` or ``equispaced``)."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {sorted(MASK_TYPES)}, got {mask_type!r}")
    return MASK_TYPES[mask_type](center_fraction, acceleration)
