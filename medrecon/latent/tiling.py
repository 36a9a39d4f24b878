"""Overlapping windows for volumes larger than a network was trained on (MONAI's ``sliding_window_inference``).

A latent denoiser trained on latent patches of ``tile`` voxels sees windows of that size at inference; their
outputs are blended with Gaussian weights (``mode="gaussian"``), so window seams carry no step. Because EDM's
denoiser is ``c_skip x + c_out F(...)`` and the blend is a weighted average, blending denoiser outputs is the
same as blending the network's. Windows never exceed the volume: an axis shorter than ``tile`` is one window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from medrecon.diffusion.tensors import sigma_batch

#: Windows evaluated together (one network call); any value gives the same result.
WINDOW_BATCH = 4


def sliding(fn: Callable[[Tensor], Tensor], x: Tensor, roi: Sequence[int], overlap: float = 0.25) -> Tensor:
    """``fn`` over overlapping windows of ``x`` ``(B, C, *S)`` with Gaussian blending; ``fn`` may change the
    channels and scale the spatial size by a constant factor (the autoencoder's encoder and decoder do)."""
    from monai.inferers import sliding_window_inference

    roi = tuple(min(int(r), int(s)) for r, s in zip(roi, x.shape[2:]))
    if roi == tuple(x.shape[2:]):
        return fn(x)
    out = sliding_window_inference(x, roi, WINDOW_BATCH, fn, overlap=overlap, mode="gaussian")
    return out.as_tensor() if hasattr(out, "as_tensor") else out


class TiledPrecond:
    """An ``EDMPrecond`` evaluated in windows of ``tile`` voxels (same call signature and attributes).

    Args:
        precond: the denoiser ``precond(x, sigma, cond) -> x0_hat``.
        tile: window size per spatial axis (the trained latent patch).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
    """

    def __init__(self, precond: Any, tile: Sequence[int], overlap: float = 0.25) -> None:
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        self._precond, self.tile, self.overlap = precond, tuple(int(t) for t in tile), float(overlap)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._precond, name)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        precond = self._precond
        if all(t >= s for t, s in zip(self.tile, x.shape[2:])):
            return precond(x, sigma, cond)
        sigma = sigma_batch(sigma, x)
        if cond is None:  # the unconditional token, as EDMPrecond builds it
            cond = x.new_zeros((x.shape[0], precond.cond_channels, *x.shape[2:]))
        c = x.shape[1]
        stacked = torch.cat([x.float(), cond.to(torch.float32)], dim=1)
        if bool((sigma == sigma[0]).all()):  # the samplers' case: one level for the batch, one pass
            level = sigma[0]
            return sliding(lambda t: precond(t[:, :c], level, t[:, c:]), stacked, self.tile, self.overlap)
        return torch.cat(  # per item: windows of several items share a network call only at one level
            [
                sliding(
                    lambda t, s=sigma[b]: precond(t[:, :c], s, t[:, c:]),
                    stacked[b : b + 1],
                    self.tile,
                    self.overlap,
                )
                for b in range(x.shape[0])
            ]
        )
