"""The frozen first stage of a latent model: image <-> scaled latent, and the condition on the latent grid.

A ``LatentCodec`` wraps a trained MONAI ``AutoencoderKL`` (``objective=autoencoder``) with what stage 2 fixed:

- ``encode(x)``: the posterior *mean* of the encoder times ``scale`` (Rombach et al. 2022: latents scaled to a
  fixed standard deviation; here ``sigma_data``, the standard deviation EDM's preconditioning assumes, so
  ``scale = sigma_data / std(latents)`` is Rombach's ``1 / std`` at ``sigma_data = 1``). Images whose sides are
  not multiples of ``factor`` are padded at the far end by edge replication first.
- ``decode(z, size)``: ``decoder(z / scale)`` cropped to the image's ``size``.
- ``condition(c)``: the task's image-space condition ``(B, C, *S)`` on the latent grid: through the encoder
  (``encode``) or rearranged, space-to-depth (``unshuffle``: ``C * factor ** dims`` channels, lossless).

With ``tile`` set, volumes larger than ``tile`` latent voxels (``tile * factor`` image voxels) along an axis are
encoded and decoded in overlapping windows with Gaussian blending (MONAI's ``sliding_window_inference``), so
the autoencoder's memory does not grow with the volume. Shapes: images ``(B, C, *S)``, latents
``(B, latent_channels, *ceil(S / factor))``; intensities are the data layer's encoded values (about [-1, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medrecon.latent.tiling import sliding

CONDITIONS = ("encode", "unshuffle")


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` ``(B, C, *S)`` padded at the far end of every spatial axis, by edge replication, to multiples of
    ``multiple`` (unchanged when they already are)."""
    from medrecon.nn.unet import pad_to_multiple as pad

    return pad(x, multiple)


def unshuffle(x: Tensor, factor: int) -> Tensor:
    """Space-to-depth: ``(B, C, *S)`` with every side divisible by ``factor`` -> ``(B, C * factor ** d,
    *(S / factor))``; the channel index runs over ``(c, offsets along axis 0, ..., axis d-1)``."""
    b, c, *spatial = x.shape
    if any(s % factor for s in spatial):
        raise ValueError(f"spatial size {tuple(spatial)} is not divisible by {factor}")
    d = len(spatial)
    shape = [b, c]
    for s in spatial:
        shape += [s // factor, factor]
    x = x.reshape(shape)
    coarse = [2 + 2 * i for i in range(d)]
    fine = [3 + 2 * i for i in range(d)]
    return x.permute(0, 1, *fine, *coarse).reshape(b, c * factor**d, *(s // factor for s in spatial))


class LatentCodec:
    """A frozen autoencoder with its latent scale and condition mode (see the module docstring).

    Args:
        autoencoder: a trained ``monai.networks.nets.AutoencoderKL`` (put in eval mode, gradients off).
        factor: image voxels per latent voxel along each axis (``medrecon.nn.registry.autoencoder_factor``).
        scale: the latent scale factor (> 0).
        condition: ``encode`` or ``unshuffle``.
        tile: latent voxels per axis of a window for large volumes (``None``: whole volumes).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        factor: int,
        scale: float,
        condition: str = "encode",
        tile: Sequence[int] | None = None,
        overlap: float = 0.25,
    ) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"latent condition {condition!r} is not one of {', '.join(CONDITIONS)}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"latent scale must be a finite number > 0, got {scale!r}")
        if int(factor) < 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.factor, self.scale, self.condition_mode = int(factor), float(scale), condition
        self.tile = None if tile is None else tuple(int(t) for t in tile)
        self.overlap = float(overlap)

    @classmethod
    def from_spec(cls, autoencoder: nn.Module, latent: Mapping[str, Any], **kwargs: Any) -> LatentCodec:
        """The codec a checkpoint's ``spec.latent`` describes (``medrecon.checkpoint.ModelSpec``)."""
        from medrecon.nn.registry import autoencoder_factor

        factor = autoencoder_factor(latent["autoencoder"])
        kwargs.setdefault("tile", latent.get("window"))
        return cls(autoencoder, factor, float(latent["scale"]), str(latent["condition"]), **kwargs)

    @property
    def latent_channels(self) -> int:
        return int(self.autoencoder.latent_channels)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    def with_tile(self, tile: Sequence[int] | None, overlap: float | None = None) -> LatentCodec:
        """The same autoencoder and scale with another window size (``None``: whole volumes)."""
        return LatentCodec(
            self.autoencoder,
            self.factor,
            self.scale,
            self.condition_mode,
            tile,
            self.overlap if overlap is None else overlap,
        )

    def latent_size(self, size: Iterable[int]) -> tuple[int, ...]:
        """The latent grid of an image of spatial ``size``: ``ceil(size / factor)``."""
        return tuple(-(-int(s) // self.factor) for s in size)

    def cond_channels(self, image_cond_channels: int) -> int:
        """Channels of :meth:`condition` for an image-space condition of ``image_cond_channels`` channels."""
        if self.condition_mode == "encode":
            return self.latent_channels
        return image_cond_channels * self.factor**self.spatial_dims

    @property
    def spatial_dims(self) -> int:
        return int(self.autoencoder.encoder.spatial_dims)

    def _windows(self, latent: Sequence[int]) -> tuple[int, ...] | None:
        if self.tile is None:
            return None
        roi = tuple(min(t, s) for t, s in zip(self.tile, latent))
        return None if roi == tuple(latent) else roi

    def encode(self, x: Tensor) -> Tensor:
        """Images ``(B, C, *S)`` -> scaled posterior means ``(B, latent_channels, *ceil(S / factor))``."""
        x = pad_to_multiple(x, self.factor)
        roi = self._windows([s // self.factor for s in x.shape[2:]])
        if roi is None:
            mu = self.autoencoder.encode(x)[0]
        else:
            mu = sliding(
                lambda t: self.autoencoder.encode(t)[0],
                x,
                tuple(r * self.factor for r in roi),
                self.overlap,
            )
        return mu * self.scale

    def decode(self, z: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """Latents ``(B, latent_channels, *L)`` -> images ``(B, C, *size)`` (``size`` defaults to
        ``L * factor``; a smaller one crops the far end, undoing :meth:`encode`'s padding)."""
        z = z / self.scale
        roi = self._windows(z.shape[2:])
        x = (
            self.autoencoder.decode(z)
            if roi is None
            else sliding(self.autoencoder.decode, z, roi, self.overlap)
        )
        if size is None:
            return x
        size = tuple(int(s) for s in size)
        if any(s > n for s, n in zip(size, x.shape[2:])):
            raise ValueError(f"cannot crop a decoded {tuple(x.shape[2:])} volume to {size}")
        return x[(..., *(slice(0, s) for s in size))]

    def condition(self, cond: Tensor) -> Tensor:
        """The image-space condition ``(B, C, *S)`` on the latent grid (see the module docstring)."""
        if self.condition_mode == "encode":
            return self.encode(cond)
        return unshuffle(pad_to_multiple(cond, self.factor), self.factor)


@torch.no_grad()
def fit_scale(autoencoder: nn.Module, batches: Iterable[Tensor], sigma_data: float) -> float:
    """``sigma_data / std`` of the posterior means of ``batches`` (clean encoded images ``(B, C, *S)``):
    the latent scale that gives training latents the standard deviation EDM assumes.

    Raises:
        ValueError: no batch, or latents without spread (an untrained or collapsed autoencoder).
    """
    values = [autoencoder.encode(b)[0].float().flatten() for b in batches]
    if not values:
        raise ValueError("no training samples to fit the latent scale on")
    std = float(torch.cat(values).std())
    if not (math.isfinite(std) and std > 1e-8):
        raise ValueError(f"the autoencoder's latents have no spread (std {std!r}); is it trained?")
    return float(sigma_data) / std
