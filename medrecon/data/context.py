"""2.5D context: the conditions of neighbouring slices as extra network input channels (``data.context=k``).

With ``k > 0`` a 2D model sees ``2k + 1`` conditions stacked along channels, ordered from slice ``s - k`` to
``s + k`` (the slice's own condition in the middle); neighbours past the end of the volume repeat the edge
slice. Training and reconstruction must build this stack the same way:

- training degrades all ``2k + 1`` slices of a sample (:func:`training_pair`);
- reconstruction conditions every slice of the degraded volume, then calls :func:`stack_neighbours` on the
  ``(N, C, H, W)`` stack of per-slice conditions in slice order, and reconstructs slice ``s`` with row ``s``.
Data consistency and guidance use the centre slice's measurement only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medrecon.physics.base import Measurement, Task


def stack_neighbours(cond: Tensor, context: int) -> Tensor:
    """Per-slice conditions ``(N, C, H, W)`` in slice order -> ``(N, (2k + 1) C, H, W)``, ``k = context``."""
    if context < 0:
        raise ValueError(f"context must be >= 0 slices, got {context!r}")
    if context == 0:
        return cond
    n = cond.shape[0]
    offsets = torch.arange(-context, context + 1, device=cond.device)
    index = (torch.arange(n, device=cond.device)[:, None] + offsets[None]).clamp(0, n - 1)  # (N, 2k+1)
    return cond[index].flatten(1, 2)


def training_pair(
    task: Task, stack: Tensor, context: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Measurement, Tensor]:
    """Degrade a training batch and build the network's condition.

    Args:
        task: the measurement model.
        stack: ``(B, 2k + 1, *S)`` clean encoded slices (centre in the middle), or ``(B, 1, *S)`` when ``k =
        0``. context: ``k``. generator: drives the task's masks and noise.

    Returns:
        ``(x0, meas, cond)``: the clean centre ``(B, 1, *S)``, its measurement, and the condition
        ``(B, (2k + 1) * task.cond_channels, *S)``.
    """
    b, c = stack.shape[:2]
    if c != 2 * context + 1:
        raise ValueError(f"expected {2 * context + 1} slices per sample for context={context}, got {c}")
    x0 = stack[:, context : context + 1]
    if context == 0:
        meas = task.degrade(x0, generator)
        return x0, meas, task.condition(meas)
    flat = stack.reshape(b * c, 1, *stack.shape[2:])
    meas_all = task.degrade(flat, generator)
    cond = task.condition(meas_all).reshape(b, c * task.cond_channels, *stack.shape[2:])
    centre = torch.arange(b, device=stack.device) * c + context
    return x0, meas_all.index(centre), cond
