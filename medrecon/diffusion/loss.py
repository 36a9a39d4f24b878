"""The EDM training loss with classifier-free condition dropout (Karras et al. 2022, section 5 and Table 1).

For each training image ``x0`` a noise level is drawn log-normally, ``ln(sigma) ~ N(P_mean, P_std^2)``, and
the denoiser is trained to recover ``x0`` from ``x0 + sigma * n`` with the weight
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``, which makes the effective target of the
raw network unit-variance at every sigma.

The log-normal draws almost never reach sigma = 10 (``ln 10`` is 2.9 standard deviations above ``P_mean``:
about 2 in 1000 samples train at sigma >= 10), yet ``sampler=mmse`` takes its one-evaluation estimate
``E[x0 | y]`` there. ``mmse_fraction`` trains that level explicitly: each sample is, with that probability,
trained at ``mmse_sigma`` instead of its log-normal sigma (same weighting, same noise draw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from medrecon.diffusion.precond import EDMPrecond
from medrecon.diffusion.tensors import Generators, append_dims, rand, randn, randn_like


@dataclass(frozen=True)
class EDMLoss:
    """Per-sample EDM loss.

    Attributes:
        P_mean, P_std: mean and standard deviation of ``ln(sigma)`` during training (EDM: -1.2, 1.2).
        sigma_data: must match the preconditioner's.
        cond_drop_prob: probability, per sample, of replacing the condition by zeros so that the same network
            also learns the unconditional denoiser that classifier-free guidance needs. 0 disables it.
        mmse_fraction: probability, per sample, of training at ``mmse_sigma`` instead of the log-normal
            sigma, so the network learns the MMSE estimate that ``sampler=mmse`` evaluates. 0 (the default)
            draws exactly what EDM draws, bit for bit.
        mmse_sigma: that noise level; match the mmse sampler's ``sigma_max`` (10).
    """

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    cond_drop_prob: float = 0.1
    mmse_fraction: float = 0.0
    mmse_sigma: float = 10.0

    def __post_init__(self) -> None:
        if not self.P_std > 0:
            raise ValueError(f"P_std must be > 0, got {self.P_std!r}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob!r}")
        if not 0.0 <= self.mmse_fraction <= 1.0:
            raise ValueError(f"mmse_fraction must be in [0, 1], got {self.mmse_fraction!r}")
        if not (self.mmse_sigma > 0 and math.isfinite(self.mmse_sigma)):
            raise ValueError(f"mmse_sigma must be a finite number > 0, got {self.mmse_sigma!r}")

    def __call__(
        self, precond: EDMPrecond, x0: Tensor, cond: Tensor | None, generator: Generators = None
    ) -> Tensor:
        """Args:
            precond: the denoiser being trained.
            x0: clean (encoded) images ``(B, C, *S)``.
            cond: conditions ``(B, cond_channels, *S)`` or ``None`` (unconditional model).
            generator: ``None``, one ``torch.Generator`` or one per sample (see
                ``medrecon.diffusion.tensors``).

        Returns:
            ``(B,)`` float32: the weighted squared error averaged over each sample's channels and voxels (a
            mean, not EDM's sum, so the value does not grow with the image size). Reduce with ``.mean()``.
        """
        b = x0.shape[0]
        x0 = x0.float()
        sigma = (randn((b,), generator, x0.device) * self.P_std + self.P_mean).exp()
        n = randn_like(x0, generator)
        if cond is not None and self.cond_drop_prob > 0:
            keep = rand((b,), generator, x0.device) >= self.cond_drop_prob
            cond = torch.where(append_dims(keep, cond.ndim), cond, torch.zeros_like(cond))
        if self.mmse_fraction > 0:  # drawn last, so the draws above are those of mmse_fraction = 0
            sigma = self.sigmas_with_mmse(sigma, rand((b,), generator, x0.device))
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noise = n * append_dims(sigma, x0.ndim)
        denoised = precond(x0 + noise, sigma, cond)
        return weight * (denoised - x0).square().flatten(1).mean(1)

    def sigmas_with_mmse(self, sigma: Tensor, u: Tensor) -> Tensor:
        """``sigma`` ``(B,)`` with the samples whose uniform draw ``u`` ``(B,)`` is below ``mmse_fraction`` set
        to ``mmse_sigma``."""
        return torch.where(u < self.mmse_fraction, torch.full_like(sigma, self.mmse_sigma), sigma)
