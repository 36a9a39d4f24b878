"""Build a task from its config name or config mapping without Hydra (tests, scripts, checkpoint loading).

``conf/task/<name>.yaml`` is the single source of a task's defaults: ``build_task("sr4x", spatial_dims=3)``
reads that file, applies the overrides and builds the class its ``_target_`` names -- the same result as
``hydra.utils.instantiate`` on the composed config, but through the closed registry :data:`TASKS`: the
``_target_`` string is a key, never imported, and every option is checked against its type and range
(``medrecon.schema``), so a task config read from a checkpoint cannot run anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medrecon.physics.base import Task
from medrecon.physics.denoise import NOISE_MODELS, DenoiseTask
from medrecon.physics.masks import MASK_TYPES
from medrecon.physics.mri import MRITask
from medrecon.physics.sr import SuperResolutionTask, ThickSliceTask
from medrecon.schema import Buildable, Choice, Float, Int, Text, resolve

TASK_NAMES = ("denoise", "sr2x", "sr4x", "thick_slices", "mri_r4", "mri_r8")

_COMMON = {
    "spatial_dims": Int(2, 3),
    "dc_tau": Float(0.0, 1e3),
    "name": Text(optional=True),
}
_NOISE_STD = Float(0.0, 10.0)  # encoded intensity units: images span [-1, 1]
_ZERO_LEVEL = Float(-1e3, 1e3)
_TASK_CLASSES: dict[type[Task], Buildable] = {
    DenoiseTask: Buildable(
        lambda: DenoiseTask,
        {"sigma": _NOISE_STD, "noise": Choice(NOISE_MODELS), "zero_level": _ZERO_LEVEL, **_COMMON},
    ),
    SuperResolutionTask: Buildable(
        lambda: SuperResolutionTask, {"factor": Int(2, 16), "noise_std": _NOISE_STD, **_COMMON}
    ),
    ThickSliceTask: Buildable(
        lambda: ThickSliceTask, {"factor": Int(2, 5), "noise_std": _NOISE_STD, **_COMMON}
    ),
    MRITask: Buildable(
        lambda: MRITask,
        {
            "acceleration": Float(1.0, 64.0),
            "center_fraction": Float(0.0, 1.0, optional=True),
            "mask_type": Choice(tuple(MASK_TYPES)),
            "coils": Int(1, 64),  # simulated coil maps are allocated per coil
            "noise_std": _NOISE_STD,
            "zero_level": _ZERO_LEVEL,
            **_COMMON,
        },
    ),
}
# the closed registry: the names conf/task writes (medrecon.physics.X) and the defining modules' full names
TASKS: dict[str, Buildable] = {
    name: buildable
    for cls, buildable in _TASK_CLASSES.items()
    for name in (f"medrecon.physics.{cls.__name__}", f"{cls.__module__}.{cls.__name__}")
}


def task_conf_dir() -> Path:
    """``conf/task`` inside the installed package (wheel) or at the top of a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf" / "task", package.parent / "conf" / "task"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("medrecon's conf/task folder is missing from this installation")


def task_config(name: str) -> dict[str, Any]:
    """The parsed ``conf/task/<name>.yaml``."""
    path = task_conf_dir() / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in task_conf_dir().glob("*.yaml"))
        raise ValueError(f"unknown task {name!r}; choose one of {known}")
    return dict(yaml.safe_load(path.read_text()))


def build_task(cfg_or_name: str | Mapping[str, Any], **overrides: Any) -> Task:
    """Build a task from a config name (``sr4x``) or a mapping with ``_target_`` (e.g. a DictConfig).

    Args:
        cfg_or_name: a name in ``conf/task`` or a config mapping (``_target_`` one of :data:`TASKS`).
        **overrides: constructor arguments replacing the config's (``spatial_dims=3``, ``noise_std=0.01``).

    Raises:
        ValueError: an unknown task name or ``_target_``, an unknown option, or a value of the wrong type
            or range (``medrecon.schema.SchemaError``), or options the task's constructor refuses.
    """
    cfg = task_config(cfg_or_name) if isinstance(cfg_or_name, str) else dict(cfg_or_name)
    cfg.update(overrides)
    cls, options = resolve(TASKS, cfg, "task")
    return cls(**options)
