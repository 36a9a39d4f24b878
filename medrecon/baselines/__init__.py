"""Classical reconstruction baselines: ``f(task, meas, **kw) -> x_hat (B, C, *S)`` on the reconstruction grid.

``input`` (the degraded input on the output grid), ``bicubic`` (super-resolution, thick slices),
``zero_filled`` (MRI), ``tv`` (all tasks) and ``nlm`` (denoising). A baseline raises ValueError for a task it
does not apply to.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from medrecon.baselines.applies import APPLIES_TO, applies
from medrecon.baselines.nlm import nlm
from medrecon.baselines.simple import bicubic, input_baseline, zero_filled
from medrecon.baselines.tv import tv
from medrecon.physics.base import Task

Baseline = Callable[..., Tensor]

BASELINES: dict[str, Baseline] = {
    "input": input_baseline,
    "bicubic": bicubic,
    "zero_filled": zero_filled,
    "tv": tv,
    "nlm": nlm,
}


def get_baseline(name: str) -> Baseline:
    """The baseline function called ``name``; ValueError naming the allowed ones otherwise."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    return BASELINES[name]


def applicable_baselines(task: Task) -> list[str]:
    """The names of the baselines that apply to ``task``, in registry order."""
    return [name for name in BASELINES if applies(name, task)]


__all__ = [
    "APPLIES_TO",
    "BASELINES",
    "Baseline",
    "applicable_baselines",
    "bicubic",
    "get_baseline",
    "input_baseline",
    "nlm",
    "tv",
    "zero_filled",
]
