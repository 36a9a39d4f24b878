"""Denoising: ``y = x + n`` with Gaussian noise, or Rician noise for magnitude MR images.

Intensity convention: images are the data layer's encoded intensities, ``[-1, 1]`` for the ``[0.5, 99.5]``
percentile range, so the range spans 2 units and ``sigma = 0.1`` is 5% of the intensity range. Zero signal is
encoded as ``zero_level`` (``-1``).

- ``noise: gaussian``: ``y = x + sigma * n``, ``n ~ N(0, I)``.
- ``noise: rician``: the magnitude of complex Gaussian noise added to the signal measured from zero,
  ``y = |(x - zero_level) + sigma (n1 + i n2)| + zero_level``; the background (``x = zero_level``) becomes
  Rayleigh-distributed with mean ``sigma sqrt(pi / 2)``, bright tissue is biased by about
  ``sigma^2 / (2 (x - zero_level))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medrecon.physics.base import (
    Measurement,
    OperatorParams,
    Task,
    check_image,
    check_spatial_dims,
    dc_weight,
    expand_to,
    randn,
)

NOISE_MODELS = ("gaussian", "rician")


class DenoiseTask(Task):
    """Identity forward operator with additive Gaussian or Rician noise.

    Args:
        sigma: noise standard deviation in encoded intensity units (range ``[-1, 1]``: 0.1 = 5% of range), >=
        0.
        noise: ``gaussian`` or ``rician``.
        spatial_dims: 2 or 3.
        zero_level: encoded value of zero signal (the Rician noise acts on ``x - zero_level``).
        dc_tau: default error std of the estimate for the noise-aware ``project``.
        name: the task's config name.
    """

    def __init__(
        self,
        sigma: float = 0.1,
        noise: str = "gaussian",
        spatial_dims: int = 2,
        zero_level: float = -1.0,
        dc_tau: float = 0.1,
        name: str = "denoise",
    ) -> None:
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {list(NOISE_MODELS)}, got {noise!r}")
        self.sigma = float(sigma)
        self.noise = noise
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.zero_level = float(zero_level)
        self.dc_tau = float(dc_tau)
        self.name = name
        self.cond_channels = 1

    def forward(self, x: Tensor, params: OperatorParams) -> Tensor:
        """A = I."""
        return x

    def adjoint(self, y: Tensor, params: OperatorParams) -> Tensor:
        """A^H = I."""
        return y

    def degrade(self, x: Tensor, generator: torch.Generator | None = None) -> Measurement:
        """Add fresh noise (per sample, per voxel) to ``x`` ``(B, 1, *S)``."""
        check_image(x, self.spatial_dims, self.image_channels)
        n = randn(tuple(x.shape), generator, x.device, x.dtype)
        if self.noise == "gaussian":
            y = x + self.sigma * n
        else:
            n2 = randn(tuple(x.shape), generator, x.device, x.dtype)
            y = torch.hypot(x - self.zero_level + self.sigma * n, self.sigma * n2) + self.zero_level
        noise_std = torch.full((x.shape[0],), self.sigma, dtype=x.dtype, device=x.device)
        return Measurement(y, OperatorParams(), noise_std)

    def condition(self, meas: Measurement) -> Tensor:
        """The noisy image itself."""
        return meas.y

    def project(self, x: Tensor, meas: Measurement, tau: float | Tensor | None = None) -> Tensor:
        """``x + w (y - x)`` with ``w = tau^2 / (tau^2 + sigma_y^2)`` (``y`` itself when noise-free)."""
        tau = self.dc_tau if tau is None else tau
        w = dc_weight(meas.noise_std, torch.as_tensor(tau, device=x.device) ** 2)
        return x + expand_to(w, x).to(x.dtype) * (meas.y - x)

    def pinv(self, meas: Measurement) -> Tensor:
        return meas.y
