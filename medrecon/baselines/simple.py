"""Non-iterative baselines: the degraded input on the output grid, bicubic interpolation, zero-filled MRI."""

from __future__ import annotations

import torch
from torch import Tensor

from medrecon.baselines.applies import check_applies
from medrecon.physics.base import Measurement, Task
from medrecon.physics.denoise import DenoiseTask
from medrecon.physics.mri import MRITask
from medrecon.physics.resample import interpolate_to


@torch.no_grad()
def input_baseline(task: Task, meas: Measurement) -> Tensor:
    """The degraded input on the reconstruction grid ``(B, 1, *S)``.

    Denoising: ``y``; super-resolution / thick slices: nearest-neighbour upsampling (``A^+ y``,
    area-consistent: its block means equal ``y``); MRI: the magnitude of the zero-filled coil-combined image,
    measured from ``task.zero_level``.
    """
    check_applies("input", task)
    if isinstance(task, DenoiseTask):
        return meas.y
    if isinstance(task, MRITask):
        return task.magnitude(task.adjoint_complex(meas.y, meas.params))
    return task.pinv(meas)


@torch.no_grad()
def bicubic(task: Task, meas: Measurement) -> Tensor:
    """Bicubic (2D) / trilinear (3D) interpolation of ``y`` to the reconstruction grid
    (``align_corners=False``)."""
    check_applies("bicubic", task)
    return interpolate_to(meas.y, task.output_size(meas))


@torch.no_grad()
def zero_filled(task: Task, meas: Measurement) -> Tensor:
    """``A^H y``: the real part of the zero-filled, coil-combined image ``(B, 1, *S)``."""
    check_applies("zero_filled", task)
    return task.adjoint(meas.y, meas.params)
