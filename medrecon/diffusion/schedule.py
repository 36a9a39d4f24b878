"""Noise levels for sampling: the Karras et al. (2022) schedule, eq. 5."""

from __future__ import annotations

import torch
from torch import Tensor


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """Decreasing noise levels (Karras et al. 2022, eq. 5)::

        sigma_i = (sigma_max^(1/rho) + i / (steps - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho

    Args:
        steps: number of solver steps (>= 1); ``steps == 1`` gives ``[sigma_max, 0]``.
        sigma_min, sigma_max: the smallest and largest positive noise levels, ``0 < sigma_min < sigma_max``,
            in the units of the encoded images.
        rho: spacing exponent; larger spends more steps at low noise (EDM: 7).

    Returns:
        ``(steps + 1,)`` float64 on the CPU: ``sigma_max, ..., sigma_min, 0``. Samplers take ``steps`` steps,
        the last one to ``sigma = 0``.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    steps = int(steps)
    if steps == 1:
        return torch.tensor([float(sigma_max), 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])
