"""Measurements for a task: from a degraded scan (reconstruct), from k-space, or by degrading ground truth
(evaluate).

All images here are the encoder's values (``[-1, 1]``), stacks of units ``(N, 1, *S)`` (see ``slicing``).

- A degraded *image* is its own measurement: ``y`` = the units as they are (super-resolution: the
  low-resolution slices, the output grid is ``task.scale`` times finer; denoising: the noisy slices), with
  the task's configured noise level (``sigma`` for denoising, ``noise_std`` otherwise) as ``noise_std``.
- Measured *k-space* (fastMRI HDF5, MRI tasks) goes through ``measurement_from_kspace``. The encoder is
  fitted on the zero-filled, coil-combined magnitude image, and because encoding is affine
  (``x_enc = a x + c``) and the forward operator linear, the encoded measurement is ``a y + A(c 1)`` (``A``
  with the same mask and coil maps), noise ``a noise_std``.
- Evaluation degrades encoded ground truth with ``task.degrade`` one unit at a time, each with its own
  generator, so a unit's measurement depends only on its seed (not on what else is in the batch).

Seeds: every unit's seed is ``sha256("<seed>:<salt>:<id>:<unit>")`` truncated to 63 bits, a pure function of
the user's ``seed``, the item's opaque id and the unit index — the same on every rank, batch size and order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from medrecon.data.encoder import Encoder
from medrecon.io.errors import Reason, RejectedInput
from medrecon.physics.base import Measurement, OperatorParams, Task


def unit_seeds(item_id: str, count: int, seed: int, salt: str = "sample", start: int = 0) -> list[int]:
    """63-bit seeds of units ``start .. start + count - 1`` of an item (see the module docstring)."""
    out = []
    for unit in range(start, start + count):
        digest = hashlib.sha256(f"{int(seed)}:{salt}:{item_id}:{unit}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return out


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """Fresh CPU generators (fine for any device: medrecon draws on the generator's device, then moves)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def is_mri(task: Task) -> bool:
    from medrecon.physics.mri import MRITask

    return isinstance(task, MRITask)


def task_noise_std(task: Task) -> float:
    """The noise level the task's measurements carry, in encoded units."""
    from medrecon.physics.denoise import DenoiseTask

    if isinstance(task, DenoiseTask):
        return float(task.sigma)
    return float(getattr(task, "noise_std", 0.0))


def image_measurement(task: Task, y: Tensor) -> Measurement:
    """A degraded image stack ``(N, 1, *S_y)`` as the task's measurement (not for MRI tasks).

    Raises:
        RejectedInput: ``unsupported`` for an MRI task, whose measurement is k-space.
    """
    if is_mri(task):
        raise RejectedInput(
            Reason.UNSUPPORTED,
            f"task {task.name} reconstructs measured k-space; give fastMRI-layout .h5 files, not images",
        )
    noise = torch.full((y.shape[0],), task_noise_std(task), dtype=y.dtype, device=y.device)
    return Measurement(y, OperatorParams(), noise)


def kspace_measurement(task: Task, kspace: np.ndarray, mask: np.ndarray | None, encoder: Encoder):
    """Measured k-space ``(slices, [coils,] H, W)`` as an encoded MRI measurement.

    Returns:
        ``(measurement, fitted encoder)``: ``y (slices, coils, H, W)`` complex64 in encoded units, and the
        encoder fitted on the zero-filled magnitude image (scanner units <-> [-1, 1] for the output).
    """
    from medrecon.physics.mri import measurement_from_kspace

    if task.spatial_dims != 2:
        raise RejectedInput(
            Reason.UNSUPPORTED, "measured k-space is reconstructed slice by slice (2D models only)"
        )
    meas = measurement_from_kspace(torch.from_numpy(np.asarray(kspace)), None if mask is None else mask)
    zero_filled = task.adjoint_complex(meas.y, meas.params).abs()  # (slices, 1, H, W), file units
    fitted = encoder.for_volume(zero_filled.numpy())
    lo, hi = float(fitted.low), float(fitted.high)
    a = 2.0 / (hi - lo)
    c = -1.0 - a * lo
    ones = torch.full(zero_filled.shape, c, dtype=torch.float32)
    y = a * meas.y + task.forward(ones, meas.params)
    return Measurement(y.to(torch.complex64), meas.params, meas.noise_std * a), fitted


def degrade_units(task: Task, x: Tensor, seeds: Sequence[int]) -> Measurement:
    """``task.degrade`` of each unit ``x[n:n+1]`` with its own generator, concatenated (``(N, 1, *S)``)."""
    if len(seeds) != x.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {x.shape[0]} units")
    parts = [task.degrade(x[n : n + 1], g) for n, g in enumerate(generators(seeds))]
    return cat_measurements(parts)


def cat_measurements(parts: Sequence[Measurement]) -> Measurement:
    """Concatenate measurements along the batch axis (operator parameters included)."""
    if not parts:
        raise ValueError("nothing to concatenate")

    def cat(values: list[Tensor | None]) -> Tensor | None:
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            raise ValueError("cannot batch measurements with and without the same operator parameters")
        return torch.cat(values)  # type: ignore[arg-type]

    return Measurement(
        y=torch.cat([p.y for p in parts]),
        params=OperatorParams(
            mask=cat([p.params.mask for p in parts]), maps=cat([p.params.maps for p in parts])
        ),
        noise_std=torch.cat([p.noise_std for p in parts]),
    )


def stacked_conditions(task: Task, meas: Measurement, context: int) -> Tensor | None:
    """The 2.5D network condition of every unit, ``(N, (2k + 1) C, *S)`` (``None`` when ``context == 0``).

    ``meas`` must hold all units of one volume in order (see ``medrecon.data.context``).
    """
    if context == 0:
        return None
    from medrecon.data.context import stack_neighbours

    return stack_neighbours(task.condition(meas), context)
