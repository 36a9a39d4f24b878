"""Every config in conf/ composes, and every ``_target_`` in it (each option of each group) instantiates.

The lists are read from the folder at test time, so configs added later are checked without editing this file.
Shape facts that come from the data at run time are supplied through ``RUNTIME_KWARGS`` (per group).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

CONF = Path(__file__).resolve().parents[1] / "conf"
PRIMARIES = sorted(p.stem for p in CONF.glob("*.yaml"))
SPECIAL = {"hydra", "experiment"}
GROUPS = sorted(d.name for d in CONF.iterdir() if d.is_dir() and d.name not in SPECIAL)
RUNTIME_KWARGS: dict[str, dict] = {"model": {"spatial_dims": 2, "in_channels": 2, "out_channels": 1}}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(name: str, overrides: list[str] | tuple[str, ...] = (), hydra_cfg: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra_cfg)


def instantiate_targets(cfg: DictConfig) -> int:
    """Instantiate every top-level node with a ``_target_``; returns how many were built."""
    built = 0
    for key in cfg:
        node = cfg[key] if not OmegaConf.is_missing(cfg, key) else None
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        try:
            OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue:  # a value the user must give on the command line
            continue
        assert instantiate(node, **RUNTIME_KWARGS.get(str(key), {})) is not None
        built += 1
    return built


@functools.cache
def primary_groups(primary: str) -> frozenset[str]:
    """The config groups in a primary config's defaults list (also those defaulting to null)."""
    return frozenset(str(k) for k in composed(primary, hydra_cfg=True).hydra.runtime.choices)


def users_of(group: str) -> list[str]:
    """Primary configs whose defaults list has ``group``."""
    return [p for p in PRIMARIES if group in primary_groups(p)]


def test_the_folder_has_the_expected_primaries_and_groups():
    assert "train" in PRIMARIES
    assert {"task", "model", "data", "sampler", "guidance"} <= set(GROUPS)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_primary_config_composes_and_instantiates(primary):
    cfg = composed(primary)
    assert isinstance(cfg, DictConfig) and len(cfg) > 0
    instantiate_targets(cfg)


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_instantiates(group):
    users = users_of(group)
    assert users, f"no primary config in conf/ uses the group {group!r}"
    for option in options(group):
        for primary in users:
            cfg = composed(primary, [f"{group}={option}"])
            node = cfg[group]
            if isinstance(node, DictConfig) and "_target_" in node:
                obj = instantiate(node, **RUNTIME_KWARGS.get(group, {}))
                assert obj is not None, (primary, group, option)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_with_some_primary(experiment):
    ok = []
    for primary in PRIMARIES:
        try:
            cfg = composed(primary, [f"+experiment={experiment}"])
        except Exception:  # an experiment belongs to one command
            continue
        instantiate_targets(cfg)
        ok.append(primary)
    assert ok, f"experiment {experiment} composes with none of {PRIMARIES}"


def test_train_config_defaults_and_run_dir():
    cfg = composed("train", ["out=/tmp/somewhere", "manifest=m.jsonl"], hydra_cfg=True)
    assert cfg.hydra.run.dir == "/tmp/somewhere" and cfg.hydra.job.name == "train"
    assert cfg.hydra.job.chdir is False and cfg.hydra.output_subdir == ".hydra"
    choices = cfg.hydra.runtime.choices
    assert (choices.task, choices.model, choices.data, choices.sampler, choices.guidance) == (
        "sr4x",
        "unet_tiny",
        "slices2d",
        "dpmpp",
        "dc",
    )
    assert cfg.device == "auto" and cfg.seed == 0 and cfg.resume == "auto"
    # the options every command spells alike sit at the top level (docs/configuration.md)
    assert (cfg.precision, cfg.compile, cfg.progress) == ("auto", False, True)
    assert not {"amp", "compile", "progress"} & set(cfg.train)
    assert OmegaConf.is_missing(composed("train"), "manifest")
    for key in (
        "steps",
        "batch_size",
        "lr",
        "warmup",
        "ema_decay",
        "grad_clip",
        "accum",
        "val_every",
        "ckpt_every",
        "keep_last",
        "max_bad_steps",
        "log_every",
    ):
        assert key in cfg.train, key
    from medrecon.train.settings import TrainSettings

    TrainSettings.from_cfg(cfg.train)  # the shipped defaults are valid


def test_demo_experiment_holds_out_a_slab():
    cfg = composed("train", ["+experiment=demo_sr4x"])
    assert cfg.data.slice_split.val > 0 and cfg.data.slice_split.test > 0 and cfg.data.slice_split.gap >= 1
    assert cfg.task.factor == 4 and cfg.data.patch_size % 8 == 0


def test_demo_denoise_is_rician_mr_noise_on_the_sr4x_slabs():
    sr4x = composed("train", ["+experiment=demo_sr4x"])
    cfg = composed("train", ["+experiment=demo_denoise"])
    task = instantiate(cfg.task)
    assert type(task).__name__ == "DenoiseTask" and task.noise == "rician" and 0.0 < task.sigma <= 0.1
    assert cfg.data.slice_split == sr4x.data.slice_split and cfg.data.axis == sr4x.data.axis
    assert cfg.train.batch_size == sr4x.train.batch_size and cfg.guidance.name == "none"
    assert (sr4x.train.steps, cfg.train.steps) == (3200, 1600)  # the shipped sr4x recipe has twice the budget


def test_demo_thick_slices_averages_through_plane_on_coronal_slices():
    cfg = composed("train", ["+experiment=demo_thick_slices"])
    task = instantiate(cfg.task)
    assert type(task).__name__ == "ThickSliceTask" and task.spatial_dims == 2
    # a 2D ThickSliceTask averages the last image axis; coronal slices (axis 1) are (I, K): K is averaged
    assert cfg.data.axis == 1 and cfg.data.slice_split.axis == 1 and cfg.data.patch_size % task.factor == 0


def test_slurm_launcher_config():
    raw = OmegaConf.load(CONF / "hydra" / "launcher" / "slurm.yaml")
    assert raw._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    try:
        plugin = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher")
    except ModuleNotFoundError:  # no hydra_plugins namespace at all
        plugin = None
    if plugin is None:
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'medrecon[slurm]')")
    cfg = composed("train", ["hydra/launcher=slurm", "out=/tmp/x"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.timeout_min == 1440
