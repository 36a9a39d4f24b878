"""Build a task from its config name or config mapping without Hydra (tests, scripts, checkpoint loading).

``conf/task/<name>.yaml`` is the single source of a task's defaults: ``build_task("sr4x", spatial_dims=3)``
reads that file, applies the overrides and instantiates its ``_target_`` (which must be a ``Task`` subclass in
``medrecon.physics``), the same result as ``hydra.utils.instantiate`` on the composed config.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medrecon.physics.base import Task

TASK_NAMES = ("denoise", "sr2x", "sr4x", "thick_slices", "mri_r4", "mri_r8")


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
    """Instantiate a task from a config name (``sr4x``) or a mapping with ``_target_`` (e.g. a DictConfig).

    Args:
        cfg_or_name: a name in ``conf/task`` or a config mapping.
        **overrides: constructor arguments replacing the config's (``spatial_dims=3``, ``noise_std=0.01``).
    """
    cfg = task_config(cfg_or_name) if isinstance(cfg_or_name, str) else dict(cfg_or_name)
    cfg.update(overrides)
    target = cfg.pop("_target_", None)
    if not isinstance(target, str) or not target.startswith("medrecon.physics."):
        raise ValueError(f"a task config needs a _target_ inside medrecon.physics, got {target!r}")
    module_name, _, attr = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"_target_ {target!r} is not a medrecon Task class")
    return cls(**cfg)
