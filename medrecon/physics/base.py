"""The measurement contract shared by training (pair synthesis), guided sampling and evaluation.

A ``Task`` is the forward model ``y = A(x) + n``. Operators that need per-sample parameters (an MRI sampling
mask, coil sensitivity maps) receive them explicitly as an ``OperatorParams`` record, so that the *same*
object can make training pairs with fresh random masks, pull reverse-diffusion steps back to a measurement,
and degrade ground truth in evaluation.

Shapes: images ``x`` are ``(B, C, *S)`` with ``len(S) == spatial_dims`` (2 or 3); measurements ``y`` are
``(B, C_y, *S_y)``, real (float32) or complex (complex64) depending on the task. Intensities are the data
layer's encoded values (roughly ``[-1, 1]``; ``zero_level`` is the encoded value of zero signal, ``-1`` by
default).

Axis convention for 3D (``spatial_dims=3``, volumes ``(I, J, K)`` with ``K`` the slice axis): the first two
spatial axes are the acquisition plane (in-plane super-resolution, the MRI Fourier plane) and the last axis is
the through-plane (slice) axis (thick slices).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from medrecon.rng import rand, randn  # noqa: F401  (re-exported for the task modules)


@dataclass(frozen=True)
class OperatorParams:
    """Per-sample parameters of the operator A (all optional; a task uses what it needs).

    Attributes:
        mask: k-space sampling mask, broadcastable to the k-space shape ``(B, coils, *S)``, float 0/1.
        maps: coil sensitivity maps broadcastable to ``(B, coils, *S)``, complex64, normalised so
            ``sum_c |S_c|^2 = 1`` inside the support.
    """

    mask: Tensor | None = None
    maps: Tensor | None = None

    def to(self, device: torch.device | str) -> OperatorParams:
        return replace(
            self,
            mask=None if self.mask is None else self.mask.to(device),
            maps=None if self.maps is None else self.maps.to(device),
        )

    def index(self, idx: slice | Tensor | list[int]) -> OperatorParams:
        """The parameters of a subset of the batch."""
        return replace(
            self,
            mask=None if self.mask is None else self.mask[idx],
            maps=None if self.maps is None else self.maps[idx],
        )


@dataclass(frozen=True)
class Measurement:
    """A (possibly noisy) measurement and everything needed to interpret it.

    Attributes:
        y: measured data ``(B, C_y, *S_y)``.
        params: the operator parameters ``y`` was taken with.
        noise_std: ``(B,)`` standard deviation of the additive noise in the units of ``y`` (0 for noise-free;
            for complex data the standard deviation of the real and of the imaginary part).
    """

    y: Tensor
    params: OperatorParams
    noise_std: Tensor

    def to(self, device: torch.device | str) -> Measurement:
        return Measurement(self.y.to(device), self.params.to(device), self.noise_std.to(device))

    def index(self, idx: slice | Tensor | list[int]) -> Measurement:
        return Measurement(self.y[idx], self.params.index(idx), self.noise_std[idx])


class Task(abc.ABC):
    """A measurement model ``y = A x + n`` on image tensors ``(B, C, *S)``.

    Attributes:
        name: the config name (``denoise``, ``sr4x``, ...).
        spatial_dims: 2 or 3.
        image_channels: channels of ``x`` (1 for magnitude/CT images).
        cond_channels: channels of ``condition(meas)``.
        dc_tau: default standard deviation (image units) assumed for the error of the estimate that
            ``project`` corrects; only used for noisy measurements (see ``project``).
        scale: integer upsampling factor from the measured grid to the reconstruction grid per spatial axis
            (``(1, ..., 1)`` except for super-resolution and thick slices).
    """

    name: str = "task"
    spatial_dims: int = 2
    image_channels: int = 1
    cond_channels: int = 1
    dc_tau: float = 0.1

    @property
    def scale(self) -> tuple[int, ...]:
        return (1,) * self.spatial_dims

    def sample_params(
        self,
        x_shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> OperatorParams:
        """Draw per-sample operator parameters (masks, coil maps) for images of shape ``x_shape``."""
        return OperatorParams()

    @abc.abstractmethod
    def forward(self, x: Tensor, params: OperatorParams) -> Tensor:
        """Apply A: image ``(B, C, *S)`` -> measurement ``(B, C_y, *S_y)``."""

    @abc.abstractmethod
    def adjoint(self, y: Tensor, params: OperatorParams) -> Tensor:
        """Apply A^H: measurement -> image-shaped tensor (real tasks return real, MRI returns real part)."""

    @abc.abstractmethod
    def degrade(self, x: Tensor, generator: torch.Generator | None = None) -> Measurement:
        """Simulate a measurement of ``x``: fresh operator parameters, A, and the noise model."""

    @abc.abstractmethod
    def condition(self, meas: Measurement) -> Tensor:
        """The image-space tensor ``(B, cond_channels, *S)`` on the reconstruction grid that the network
        sees."""

    @abc.abstractmethod
    def project(self, x: Tensor, meas: Measurement, tau: float | Tensor | None = None) -> Tensor:
        """Data consistency: the image closest to ``x`` that agrees with ``meas``.

        Noise-free samples (``noise_std == 0``) are projected exactly onto ``{x : A x = y}`` (multi-coil MRI:
        one coil-combined data-consistency step). Noisy samples get the noise-aware (Wiener / MAP) step
        ``x + w A^+ (y - A x)`` with ``w = t^2 / (t^2 + noise_std^2)``, where ``t^2`` is the variance of
        ``A e`` for a white image error ``e`` of standard deviation ``tau`` (default ``self.dc_tau``): a
        sample much noisier than the estimate is left almost unchanged.

        Args:
            x: current estimate ``(B, C, *S)``.
            meas: the measurement.
            tau: per-sample ``(B,)`` or scalar standard deviation of the error of ``x`` in image units (a
                diffusion sampler may pass its current noise level).
        """

    def pinv(self, meas: Measurement) -> Tensor:
        """The minimum-norm image consistent with ``meas`` (``project`` of zeros, ignoring noise)."""
        return self.adjoint(meas.y, meas.params)


def dc_weight(noise_std: Tensor, prior_var: Tensor | float) -> Tensor:
    """Per-sample data-consistency weight ``w = v / (v + noise_std^2)``, exactly 1 where ``noise_std == 0``.

    Args:
        noise_std: ``(B,)`` measurement noise standard deviation.
        prior_var: ``(B,)`` or scalar variance of the estimate's error mapped into measurement space.

    Returns:
        ``(B,)`` weights in ``[0, 1]`` (same dtype and device as ``noise_std``).
    """
    noise_var = noise_std.to(torch.float64) ** 2
    prior = torch.as_tensor(prior_var, dtype=torch.float64, device=noise_std.device)
    w = prior / (prior + noise_var).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(noise_var == 0, torch.ones_like(w), w).to(noise_std.dtype)


def expand_to(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor so it broadcasts against ``like`` ``(B, ...)``."""
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


def check_spatial_dims(spatial_dims: int) -> int:
    """Validate the ``spatial_dims`` option."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def check_image(x: Tensor, spatial_dims: int, channels: int = 1) -> None:
    """Raise ValueError unless ``x`` is ``(B, channels, *S)`` with ``len(S) == spatial_dims``."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != channels:
        raise ValueError(
            f"expected an image batch (B, {channels}, *S) with {spatial_dims} spatial dims, got shape "
            f"{tuple(x.shape)}"
        )
