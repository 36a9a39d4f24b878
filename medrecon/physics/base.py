"""The measurement contract shared by training (pair synthesis), guided sampling and evaluation.

A ``Task`` is the forward model ``y = A(x) + n``. Operators that need per-sample parameters (an MRI sampling mask,
coil sensitivity maps) receive them explicitly as an ``OperatorParams`` record, so that the *same* object can make
training pairs with fresh random masks, pull reverse-diffusion steps back to a measurement, and degrade ground
truth in evaluation.

Shapes: images ``x`` are ``(B, C, *S)`` with ``len(S) == spatial_dims`` (2 or 3); measurements ``y`` are
``(B, C_y, *S_y)``, real (float32) or complex (complex64) depending on the task.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class OperatorParams:
    """Per-sample parameters of the operator A (all optional; a task uses what it needs).

    Attributes:
        mask: k-space sampling mask, broadcastable to the k-space shape ``(B, coils, *S)``, float 0/1.
        maps: coil sensitivity maps ``(B, coils, *S)`` complex64, normalised so ``sum_c |S_c|^2 = 1``.
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
        noise_std: ``(B,)`` standard deviation of the additive noise in the units of ``y`` (0 for noise-free).
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
        scale: integer upsampling factor from the measured grid to the reconstruction grid per spatial axis
            (``(1, 1)`` except for super-resolution).
    """

    name: str = "task"
    spatial_dims: int = 2
    image_channels: int = 1
    cond_channels: int = 1

    @property
    def scale(self) -> tuple[int, ...]:
        return (1,) * self.spatial_dims

    def sample_params(
        self, x_shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu"
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
        """The image-space tensor ``(B, cond_channels, *S)`` on the reconstruction grid that the network sees."""

    @abc.abstractmethod
    def project(self, x: Tensor, meas: Measurement) -> Tensor:
        """Data consistency: the image closest to ``x`` that agrees with ``meas`` (noise-aware when noisy)."""

    def pinv(self, meas: Measurement) -> Tensor:
        """A simple inverse on the reconstruction grid (default: the adjoint); used as the ``input`` baseline."""
        return self.adjoint(meas.y, meas.params)
