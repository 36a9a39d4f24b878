"""Which baseline applies to which task family (one table, used to validate and to list)."""

from __future__ import annotations

from medrecon.physics.base import Task
from medrecon.physics.denoise import DenoiseTask
from medrecon.physics.mri import MRITask
from medrecon.physics.sr import BlockAverageTask

_ALL = (DenoiseTask, BlockAverageTask, MRITask)

APPLIES_TO: dict[str, tuple[tuple[type, ...], str]] = {
    "input": (_ALL, "denoise, super-resolution, thick-slice and MRI tasks"),
    "bicubic": ((BlockAverageTask,), "super-resolution and thick-slice tasks (sr2x, sr4x, thick_slices)"),
    "zero_filled": ((MRITask,), "MRI tasks (mri_r4, mri_r8)"),
    "tv": (_ALL, "denoise, super-resolution, thick-slice and MRI tasks"),
    "nlm": ((DenoiseTask,), "the denoise task"),
}


def applies(name: str, task: Task) -> bool:
    """Whether baseline ``name`` applies to ``task``."""
    return isinstance(task, APPLIES_TO[name][0])


def check_applies(name: str, task: Task) -> None:
    """Raise ValueError naming the supported tasks when baseline ``name`` does not apply to ``task``."""
    if not applies(name, task):
        raise ValueError(
            f"baseline {name!r} does not apply to task {task.name!r}; it applies to {APPLIES_TO[name][1]}"
        )
