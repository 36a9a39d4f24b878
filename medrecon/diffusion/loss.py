"""The EDM training loss with classifier-free condition dropout (Karras et al. 2022, section 5 and Table 1).

For each training image ``x0`` a noise level is drawn log-normally, ``ln(sigma) ~ N(P_mean, P_std^2)``, and
the denoiser is trained to recover ``x0`` from ``x0 + sigma * n`` with the weight
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``, which makes the effective target of the
raw network unit-variance at every sigma.
"""

from __future__ import annotations

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
    """

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    cond_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        if not self.P_std > 0:
            raise ValueError(f"P_std must be > 0, got {self.P_std!r}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob!r}")

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
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noise = randn_like(x0, generator) * append_dims(sigma, x0.ndim)
        if cond is not None and self.cond_drop_prob > 0:
            keep = rand((b,), generator, x0.device) >= self.cond_drop_prob
            cond = torch.where(append_dims(keep, cond.ndim), cond, torch.zeros_like(cond))
        denoised = precond(x0 + noise, sigma, cond)
        return weight * (denoised - x0).square().flatten(1).mean(1)
