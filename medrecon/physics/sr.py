"""Super-resolution (in-plane) and thick-slice (through-plane) tasks: block averaging plus optional noise.

Operator: ``A = block mean`` over ``f_i`` voxels along each spatial axis (area downsampling). Its adjoint is
nearest-neighbour upsampling divided by ``F = prod(f_i)``, so ``A A^H = I / F`` and the pseudo-inverse is
``A^+ = F A^H`` (nearest-neighbour upsampling).

- ``SuperResolutionTask`` (``sr2x``, ``sr4x``): factor ``f`` on the two in-plane axes (2D: both axes; 3D: the
  first two spatial axes, the slice axis untouched).
- ``ThickSliceTask`` (``thick_slices``): factor ``f`` in 2..5 on the last spatial axis (3D: the slice axis;
  2D: the second image axis, which simulates a thick-slice reformat of a 2D plane).
"""

from __future__ import annotations

import math

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
from medrecon.physics.resample import block_mean, block_mean_adjoint, check_divisible, interpolate_to


class BlockAverageTask(Task):
    """``y = block_mean(x) + noise_std * n``.

    Args:
        factors: one integer factor per spatial axis.
        spatial_dims: 2 or 3 (``len(factors)``).
        noise_std: measurement noise standard deviation (encoded intensity units), >= 0.
        dc_tau: default error std of the estimate for the noise-aware ``project``.
        name: the task's config name.
    """

    def __init__(
        self, factors: tuple[int, ...], spatial_dims: int, noise_std: float, dc_tau: float, name: str
    ) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if len(factors) != self.spatial_dims or any(int(f) != f or f < 1 for f in factors):
            raise ValueError(f"factors must be {self.spatial_dims} positive integers, got {factors!r}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.factors = tuple(int(f) for f in factors)
        self.noise_std = float(noise_std)
        self.dc_tau = float(dc_tau)
        self.name = name
        self.cond_channels = 1

    @property
    def scale(self) -> tuple[int, ...]:
        return self.factors

    def forward(self, x: Tensor, params: OperatorParams) -> Tensor:
        """Block mean ``(B, C, *S) -> (B, C, *S / f)``; ValueError when a size is not divisible."""
        return block_mean(x, self.factors)

    def adjoint(self, y: Tensor, params: OperatorParams) -> Tensor:
        """Nearest-neighbour upsampling divided by ``prod(factors)``."""
        return block_mean_adjoint(y, self.factors)

    def degrade(self, x: Tensor, generator: torch.Generator | None = None) -> Measurement:
        check_image(x, self.spatial_dims, self.image_channels)
        check_divisible(tuple(x.shape[2:]), self.factors)
        y = self.forward(x, OperatorParams())
        if self.noise_std > 0:
            y = y + self.noise_std * randn(tuple(y.shape), generator, y.device, y.dtype)
        noise_std = torch.full((x.shape[0],), self.noise_std, dtype=x.dtype, device=x.device)
        return Measurement(y, OperatorParams(), noise_std)

    def output_size(self, meas: Measurement) -> tuple[int, ...]:
        """The reconstruction grid's spatial size."""
        return tuple(n * f for n, f in zip(meas.y.shape[2:], self.factors))

    def condition(self, meas: Measurement) -> Tensor:
        """Bicubic (2D) / trilinear (3D) interpolation of ``y`` to the reconstruction grid."""
        return interpolate_to(meas.y, self.output_size(meas))

    def project(self, x: Tensor, meas: Measurement, tau: float | Tensor | None = None) -> Tensor:
        """``x + w A^+ (y - A x)``; ``w = 1`` (exact projection) for noise-free samples, else
        ``w = (tau^2 / F) / (tau^2 / F + noise_std^2)`` (a block mean of ``F`` voxels has variance
        ``tau^2/F``)."""
        tau = self.dc_tau if tau is None else tau
        n = math.prod(self.factors)
        w = dc_weight(meas.noise_std, torch.as_tensor(tau, device=x.device) ** 2 / n)
        residual = meas.y - self.forward(x, meas.params)
        return x + n * expand_to(w, x).to(x.dtype) * self.adjoint(residual, meas.params)

    def pinv(self, meas: Measurement) -> Tensor:
        """``A^+ y``: nearest-neighbour upsampling."""
        return math.prod(self.factors) * self.adjoint(meas.y, meas.params)


class SuperResolutionTask(BlockAverageTask):
    """In-plane area downsampling by ``factor`` (2D: ``(f, f)``; 3D: ``(f, f, 1)``).

    Args:
        factor: integer >= 2.
        spatial_dims: 2 or 3.
        noise_std: measurement noise std in encoded intensity units (default 0).
        dc_tau: default error std of the estimate for the noise-aware ``project``.
        name: config name (default ``sr{factor}x``).
    """

    def __init__(
        self,
        factor: int = 4,
        spatial_dims: int = 2,
        noise_std: float = 0.0,
        dc_tau: float = 0.1,
        name: str | None = None,
    ) -> None:
        if int(factor) != factor or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        spatial_dims = check_spatial_dims(spatial_dims)
        factors = (int(factor),) * 2 + (1,) * (spatial_dims - 2)
        super().__init__(factors, spatial_dims, noise_std, dc_tau, name or f"sr{int(factor)}x")
        self.factor = int(factor)


class ThickSliceTask(BlockAverageTask):
    """Through-plane averaging of ``factor`` (2..5) consecutive slices along the last spatial axis.

    Args:
        factor: integer in 2..5.
        spatial_dims: 2 or 3.
        noise_std: measurement noise std in encoded intensity units (default 0).
        dc_tau: default error std of the estimate for the noise-aware ``project``.
        name: config name.
    """

    def __init__(
        self,
        factor: int = 4,
        spatial_dims: int = 2,
        noise_std: float = 0.0,
        dc_tau: float = 0.1,
        name: str = "thick_slices",
    ) -> None:
        if int(factor) != factor or not 2 <= factor <= 5:
            raise ValueError(f"factor must be an integer in 2..5, got {factor!r}")
        spatial_dims = check_spatial_dims(spatial_dims)
        factors = (1,) * (spatial_dims - 1) + (int(factor),)
        super().__init__(factors, spatial_dims, noise_std, dc_tau, name)
        self.factor = int(factor)
