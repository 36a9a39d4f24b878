"""Latent diffusion for whole volumes: a frozen MONAI AutoencoderKL (stage 1) and the EDM denoiser, samplers
and guidance of ``medrecon.diffusion`` run unchanged on its latents (stage 2).

- ``codec``: image <-> scaled latent, the condition on the latent grid, windows for large volumes;
- ``loss``: the autoencoder's loss (stage 1) and EDM's on latents (stage 2);
- ``task``: the physics seen from latent space (decode, act on the image, encode back);
- ``tiling``: overlapping windows with Gaussian blending (MONAI's ``sliding_window_inference``);
- ``posterior``: posterior draws decoded to images (and projected onto the measurement).

Torch and MONAI only (no Hydra, no training imports).
"""

from medrecon.latent.codec import LatentCodec, fit_scale
from medrecon.latent.loss import AutoencoderLoss, LatentLoss
from medrecon.latent.posterior import latent_posterior, reconstruct_autoencoder
from medrecon.latent.task import LatentTask
from medrecon.latent.tiling import TiledPrecond

__all__ = [
    "AutoencoderLoss",
    "LatentCodec",
    "LatentLoss",
    "LatentTask",
    "TiledPrecond",
    "fit_scale",
    "latent_posterior",
    "reconstruct_autoencoder",
]
