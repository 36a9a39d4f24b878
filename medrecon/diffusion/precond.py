"""EDM preconditioning: turn a raw network ``F`` into a denoiser ``D(x, sigma, cond) -> x0_hat``.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM), Table 1::

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

Why EDM rather than an epsilon-predicting discrete-time DDPM: the network's input and its training target have
unit variance at *every* noise level (so one network is well conditioned from sigma = 0.002 to 80, and bf16 is
safe); sigma is continuous, so the same trained model runs with any sampler (DDPM-style ancestral, DDIM,
DPM-Solver++) and any number of steps without retraining or timestep tables; and the recipe (preconditioning,
log-normal training sigmas, loss weighting, Karras schedule) is published with ablations and widely
reproduced.

Conditioning is by channel concatenation: the network sees ``cat([c_in * x, cond], dim=1)``. ``cond`` is *not*
scaled by ``c_in``: it is a clean image-space tensor (the task's ``condition(meas)``, e.g. the upsampled
low-res slice or the zero-filled MRI image, possibly with 2.5D neighbour slices) of unit-ish scale at every
sigma.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from medrecon.diffusion.tensors import append_dims, sigma_batch


class EDMPrecond(nn.Module):
    """EDM-preconditioned conditional denoiser around a raw network.

    Args:
        net: a module called as ``net(x_in, c_noise)`` with ``x_in`` of shape
            ``(B, image_channels + cond_channels, *S)`` and ``c_noise`` ``(B,)``, returning
            ``(B, image_channels, *S)`` (``medrecon.nn.UNet``).
        image_channels: channels of the image being denoised.
        cond_channels: channels of the condition (0 for an unconditional model).
        sigma_data: standard deviation of the (encoded) training images; 0.5 for images scaled to about
            [-1, 1].
    """

    def __init__(
        self, net: nn.Module, image_channels: int, cond_channels: int, sigma_data: float = 0.5
    ) -> None:
        super().__init__()
        if int(image_channels) < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels!r}")
        if int(cond_channels) < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels!r}")
        if not float(sigma_data) > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        net_in = getattr(net, "in_channels", None)
        if net_in is not None and net_in != image_channels + cond_channels:
            raise ValueError(
                f"net.in_channels={net_in} but image_channels + cond_channels = "
                f"{image_channels + cond_channels}"
            )
        self.net = net
        self.image_channels = int(image_channels)
        self.cond_channels = int(cond_channels)
        self.sigma_data = float(sigma_data)
        #: a distilled model's record (``medrecon.diffusion.distill.DistillRecord``, set when its checkpoint is
        #: loaded): its denoiser is trained on that grid of noise levels only, so it samples on it
        self.distilled: Any = None

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` for ``sigma`` (any shape, float32)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Denoise.

        Args:
            x: noisy images ``(B, image_channels, *S)``, ``x = x0 + sigma * n``.
            sigma: ``(B,)`` or a scalar, > 0.
            cond: ``(B, cond_channels, *S)`` on the same grid as ``x``, or ``None`` for the unconditional
                model (zeros: the token that ``EDMLoss``'s condition dropout trains, for classifier-free
                guidance).

        Returns:
            ``x0_hat`` ``(B, image_channels, *S)`` float32 (also under autocast: the skip path stays float32).
        """
        if x.ndim < 3 or x.shape[1] != self.image_channels:
            raise ValueError(f"expected x of shape (B, {self.image_channels}, *S), got {tuple(x.shape)}")
        x = x.float()
        sigma = sigma_batch(sigma, x)
        if cond is None:
            cond = x.new_zeros((x.shape[0], self.cond_channels, *x.shape[2:]))
        elif (
            cond.shape[0] != x.shape[0]
            or cond.shape[1] != self.cond_channels
            or cond.shape[2:] != x.shape[2:]
        ):
            raise ValueError(
                f"cond must be (B={x.shape[0]}, {self.cond_channels}, {tuple(x.shape[2:])}), "
                f"got {tuple(cond.shape)}"
            )
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        x_in = torch.cat([c_in * x, cond.to(x.dtype)], dim=1)
        f_x = self.net(x_in, c_noise)
        return c_skip * x + c_out * f_x.float()
