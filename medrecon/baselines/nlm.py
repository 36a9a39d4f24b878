"""Non-local means denoising (scikit-image), slice by slice.

The baseline is given the task's known noise level (``DenoiseTask.sigma``), as TV's weight and the model's
SURE blend are: a baseline that guesses what the others are told is not an honest comparison. Where no level is
known (``nlm_slice`` called alone) it is estimated per slice with the Donoho-Johnstone wavelet estimator (the
median absolute finest diagonal detail coefficient / 0.6745) - what ``skimage.restoration.estimate_sigma``
computes, written out with a Haar wavelet because ``estimate_sigma`` needs PyWavelets, an optional scikit-image
dependency medrecon does not otherwise need. The estimate fails on coarse, blocky scans (it reads structure as
noise; docs/results.md, denoising).

NLM is the classical denoiser here instead of BM3D: the ``bm3d`` package (4.0.3, and the ``bm4d`` package it
wraps) is licensed for non-commercial use only and ships the algorithm as closed binaries, which an Apache-2.0
toolkit cannot depend on, not even as an optional extra (docs/physics.md).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.restoration import denoise_nl_means
from torch import Tensor

from medrecon.baselines.applies import check_applies
from medrecon.physics.base import Measurement, Task


def estimate_sigma(image: np.ndarray) -> float:
    """Gaussian noise std of a 2D image: ``median(|HH|) / 0.6745`` of the finest Haar diagonal details."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    a = np.asarray(image[:h, :w], dtype=np.float64)
    hh = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def nlm_slice(
    image: np.ndarray,
    h_factor: float = 0.8,
    patch_size: int = 5,
    patch_distance: int = 6,
    sigma: float | None = None,
) -> np.ndarray:
    """Denoise one 2D slice with ``h = h_factor * sigma``.

    ``sigma`` is the noise std in the image's units, ``None`` to estimate it with ``estimate_sigma``.
    """
    sigma = float(estimate_sigma(image)) if sigma is None else float(sigma)
    if sigma == 0.0:
        return image.copy()
    out = denoise_nl_means(
        image,
        h=h_factor * sigma,
        sigma=sigma,
        patch_size=patch_size,
        patch_distance=patch_distance,
        fast_mode=True,
    )
    return out.astype(image.dtype)


@torch.no_grad()
def nlm(
    task: Task, meas: Measurement, h_factor: float = 0.8, patch_size: int = 5, patch_distance: int = 6
) -> Tensor:
    """NLM of every 2D slice of ``y`` ``(B, 1, *S)`` (3D: slices along the last spatial axis); CPU numpy.

    Args:
        task: a ``DenoiseTask``; its ``sigma`` (encoded units) is the noise level NLM is given.
        meas: its measurement.
        h_factor: filter strength relative to the noise std.
        patch_size: patch side in pixels.
        patch_distance: search radius in pixels.
    """
    check_applies("nlm", task)
    sigma = float(task.sigma)
    y = meas.y.detach().to("cpu", torch.float32).numpy()
    out = np.empty_like(y)
    for b in range(y.shape[0]):
        for c in range(y.shape[1]):
            vol = y[b, c]
            if vol.ndim == 2:
                out[b, c] = nlm_slice(vol, h_factor, patch_size, patch_distance, sigma)
            else:
                for k in range(vol.shape[-1]):
                    out[b, c, ..., k] = nlm_slice(vol[..., k], h_factor, patch_size, patch_distance, sigma)
    return torch.from_numpy(out).to(meas.y.device)
