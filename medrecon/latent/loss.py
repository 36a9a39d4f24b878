"""The two training losses of latent diffusion, with the loop's calling convention
``loss(module, x0, cond, generator) -> (B,)``.

- :class:`AutoencoderLoss` (stage 1, ``objective=autoencoder``): reconstruction (L1 or L2) of the image from a
  posterior sample plus ``kl_weight`` times the KL divergence of the posterior from N(0, I) (Kingma & Welling;
  Rombach et al. 2022; the weight 1e-6 on the per-sample *sum* is MONAI's tutorials'). The perceptual loss of
  the LDM recipe is not used: MONAI's ``PerceptualLoss`` downloads pretrained weights, which an offline
  installation cannot; neither is the patch-adversarial loss (a second network to train, about doubling the
  cost of a step, for sharper textures rather than higher PSNR).
- :class:`LatentLoss` (stage 2, ``objective=latent``): ``EDMLoss`` unchanged, on the scaled posterior means of
  the clean images and the condition mapped to the latent grid by the frozen codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medrecon.diffusion.loss import EDMLoss
from medrecon.latent.codec import LatentCodec
from medrecon.rng import Generators

NORMS = ("l1", "l2")


@dataclass(frozen=True)
class AutoencoderLoss:
    """Per-sample ``reconstruction + kl_weight * KL`` of a MONAI ``AutoencoderKL``.

    Attributes:
        norm: ``l1`` (mean absolute error; sharper than L2 for image restoration, Zhao et al. 2017) or ``l2``.
        kl_weight: weight of the KL term, summed over each sample's latent elements, >= 0.
        sigma_data: EDM's data standard deviation, recorded in the spec (not used by this loss).
    """

    norm: str = "l1"
    kl_weight: float = 1e-6
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"autoencoder_loss.norm={self.norm!r} is not one of {', '.join(NORMS)}")
        if not float(self.kl_weight) >= 0:
            raise ValueError(f"autoencoder_loss.kl_weight must be >= 0, got {self.kl_weight!r}")

    def __call__(
        self, autoencoder: nn.Module, x0: Tensor, cond: Tensor | None = None, generator: Generators = None
    ) -> Tensor:
        """Args:
            autoencoder: the (DDP-wrapped / compiled) ``AutoencoderKL``; called as ``autoencoder(x0)``, whose
                posterior sample draws from the global RNG (the loop reseeds it at every step).
            x0: clean encoded images ``(B, C, *S)``, sides multiples of the autoencoder's factor.
            cond, generator: unused (the loop's calling convention).

        Returns:
            ``(B,)`` float32 losses.
        """
        recon, mu, sigma = autoencoder(x0)
        err = recon.float() - x0.float()
        rec = (err.abs() if self.norm == "l1" else err.square()).flatten(1).mean(1)
        mu, var = mu.float(), sigma.float().square()
        kl = 0.5 * (mu.square() + var - var.clamp_min(1e-30).log() - 1).flatten(1).sum(1)
        return rec + float(self.kl_weight) * kl


@dataclass(frozen=True)
class LatentLoss:
    """``EDMLoss`` on latents: ``edm(precond, encode(x0), codec.condition(cond))``, the codec frozen.

    Attributes:
        edm: the EDM loss (its ``sigma_data`` is the preconditioner's and the latents' standard deviation).
        codec: the frozen autoencoder with the latent scale and condition mode.
    """

    edm: EDMLoss
    codec: LatentCodec

    @property
    def sigma_data(self) -> float:
        return self.edm.sigma_data

    def __call__(
        self, precond: nn.Module, x0: Tensor, cond: Tensor | None, generator: Generators = None
    ) -> Tensor:
        """``x0`` clean images ``(B, C, *S)``, ``cond`` their image-space conditions ``(B, C', *S)``; returns
        ``(B,)`` (see ``EDMLoss``)."""
        with torch.no_grad():
            z0 = self.codec.encode(x0).float()
            c = None if cond is None else self.codec.condition(cond).float()
        return self.edm(precond, z0, c, generator)
