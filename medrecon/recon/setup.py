"""The set-up reconstruct, evaluate and the Python API share: everything resolved before the first item.

One place turns options into objects, so the three entry points cannot drift apart:

- :func:`run_options` -> :class:`RunOptions`: ``device`` (``auto|cpu|cuda[:N]``), the network ``precision``
  (``auto|bf16|fp32``, resolved for the device), ``batch_size``, ``samples``, ``seed`` and ``compile``,
  validated (:func:`check_int`, :func:`check_bool`);
- :func:`load_model`: a checkpoint, validated before any weight is read (``medrecon.checkpoint``);
- :func:`resolve_task`: the checkpoint's task (a given ``task`` must describe the same one), else ``task``;
- :func:`checkpoint_axis` / :func:`unit_layout`: how volumes are cut into units (``medrecon.recon.slicing``);
- :func:`sampler_config` / :func:`guidance_config`: a name (``conf/sampler/<name>.yaml``,
  ``conf/guidance/<name>.yaml``, the files the commands compose) or a config node as a validated
  ``SamplerConfig`` / ``GuidanceConfig``;
- :func:`build_method`: a checkpoint's estimator or a baseline as the engine's callable
  (``medrecon.recon.methods``);
- :func:`reconstruct_setup` -> :class:`Setup`: all of the above for one reconstruction method (reconstruct and
  the API's ``reconstruct``); evaluate composes the same pieces for several methods.

Every problem with an option is a ``medrecon.errors.UsageError`` of one line naming it. Also here, for both
commands' runs: :func:`scrub` (paths out of failure details) and :func:`output_dir` (Hydra's job folder).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from medrecon.errors import UsageError
from medrecon.recon.slicing import Layout

log = logging.getLogger("medrecon.reconstruct")

_PATH_PATTERN = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"():,;]+)+")
_SAMPLER_TARGET = "medrecon.diffusion.samplers.SamplerConfig"
_GUIDANCE_TARGET = "medrecon.diffusion.guidance.GuidanceConfig"


def scrub(text: str) -> str:
    """``text`` with anything that looks like a file path replaced by ``<path>`` (folder names may be PHI)."""
    return _PATH_PATTERN.sub("<path>", text)


def output_dir(cfg: Any) -> Path:
    """Hydra's output folder for this job (``out``, or ``out/<n>`` in a multirun), else ``cfg.out``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(str(cfg.out))


def container(node: Any) -> Any:
    """A plain Python value of an OmegaConf node (resolved); anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


# ------------------------------------------------------------------------------------------------ options
def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an integer ``>= minimum`` (booleans are not integers here); else a usage error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is ``True`` or ``False``; else a usage error."""
    if not isinstance(value, bool):
        raise UsageError(f"{name}={value!r} must be true or false")
    return value


def bool_option(cfg: Any, name: str, default: bool = False) -> bool:
    """A boolean option of a config (``name=true|false``); anything else is a usage error."""
    return check_bool(name, cfg.get(name, default))


@dataclass(frozen=True)
class RunOptions:
    """The options every reconstruction run shares, validated.

    Attributes:
        device: where the methods run.
        precision: the network's precision on ``device``: ``"fp32"`` or ``"bf16"`` (``auto`` resolved).
        batch_size: units (slices) per batch, across volumes (>= 1); with ``auto_batch`` the first size.
        samples: posterior samples per unit (>= 1; diffusion only).
        seed: the seed every unit's noise is derived from (>= 0; ``medrecon.recon.measure.unit_seeds``).
        compile: ``torch.compile`` the network.
        auto_batch: ``batch_size=auto``: on CUDA the batch size is chosen from free memory after probing the
            first batches (``medrecon.recon.batching``); elsewhere ``batch_size`` stays at its CPU default.
        blend: mix a model's output with a classical reconstruction per slice, the weight estimated from the
            measurement (``medrecon.recon.blend``): ``auto`` | ``none`` | ``tv`` | ``nlm``.
    """

    device: torch.device
    precision: str = "fp32"
    batch_size: int = 16
    samples: int = 1
    seed: int = 0
    compile: bool = False
    auto_batch: bool = False
    blend: str = "auto"

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for ``medrecon.recon.engine.Engine``: the batch size (and whether it is sized from
        free memory), and static batch shapes when the network is compiled (no recompiles for the last,
        shorter batch)."""
        return {"batch_size": self.batch_size, "auto_batch": self.auto_batch, "static_shapes": self.compile}


def run_options(
    *,
    device: str | torch.device = "auto",
    precision: str = "auto",
    batch_size: int | str = 16,
    samples: int = 1,
    seed: int = 0,
    compile: bool = False,
    blend: str = "auto",
) -> RunOptions:
    """Validate the shared options (a ``torch.device`` is taken as already resolved). ``batch_size`` is an
    integer >= 1 or ``"auto"`` (see :class:`RunOptions`).

    Raises:
        UsageError: a value of the wrong type or range, an unknown device or precision, CUDA without a GPU.
    """
    from medrecon.device import resolve_device, resolve_precision

    samples = check_int("samples", samples)
    auto_batch = isinstance(batch_size, str) and batch_size.strip().lower() == "auto"
    if auto_batch:
        from medrecon.recon.batching import CPU_BATCH

        batch_size = CPU_BATCH
    batch_size = check_int("batch_size", batch_size)
    seed = check_int("seed", seed, 0)
    compile = check_bool("compile", compile)
    from medrecon.recon.blend import BLEND_CHOICES

    if blend not in BLEND_CHOICES:
        raise UsageError(f"blend={blend!r} must be one of {', '.join(BLEND_CHOICES)}")
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    precision = resolve_precision(precision, resolved)
    return RunOptions(resolved, precision, batch_size, samples, seed, compile, auto_batch, str(blend))


def cfg_run_options(cfg: Any, device: torch.device | None = None) -> RunOptions:
    """:func:`run_options` from a command's config (``device`` when already resolved, e.g. per rank)."""
    return run_options(
        device=cfg.device if device is None else device,
        precision=cfg.get("precision", "auto"),
        batch_size=cfg.get("batch_size"),
        samples=cfg.get("samples"),
        seed=cfg.get("seed"),
        compile=cfg.get("compile", False),
        blend=cfg.get("blend", "auto"),
    )


# ------------------------------------------------------------------------------------------------ model, task
def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", weights: str = "ema", option: str = "checkpoint"
) -> Any:
    """A checkpoint as ``medrecon.checkpoint.LoadedModel`` (``option`` names it in messages).

    Raises:
        UsageError: the file is missing or fails a check, or ``weights`` is not ``ema``/``raw``.
    """
    from medrecon.checkpoint import load_checkpoint

    try:
        return load_checkpoint(str(path), device=device, weights=str(weights))
    except ValueError as err:
        raise UsageError(f"{option}={path}: {err}") from err


def resolve_task(given: Any, loaded: Any) -> Any:
    """The task: the checkpoint's (a given ``task`` must describe the same one), else ``given``.

    Args:
        given: ``None``, a name in ``conf/task`` (``"sr4x"``), a task config mapping (a composed ``task=``
            group), or a built ``Task`` (without a checkpoint, or the checkpoint's own).
        loaded: the ``LoadedModel`` or ``None``.

    Raises:
        UsageError: no task at all, an unknown or invalid task, or one that differs from the checkpoint's.
    """
    from medrecon.physics.base import Task
    from medrecon.physics.registry import build_task, task_config

    if isinstance(given, Task):
        if loaded is not None and given is not loaded.task:
            raise UsageError("a checkpoint reconstructs the task it was trained for: leave task= out")
        return given
    if isinstance(given, str):
        try:
            given = task_config(given)
        except ValueError as err:
            raise UsageError(f"task=: {err}") from err
    if loaded is not None:
        if given is not None:
            ours = {k: v for k, v in dict(container(given)).items() if k != "spatial_dims"}
            theirs = {k: v for k, v in dict(loaded.spec.task).items() if k != "spatial_dims"}
            if ours != theirs:
                differs = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
                raise UsageError(
                    f"task= differs from the checkpoint's task in {differs}; a checkpoint reconstructs "
                    "the task it was trained for: leave task= out"
                )
        return loaded.task
    if given is None:
        raise UsageError("a baseline method needs task=TASK (e.g. task=sr4x) when no checkpoint= is given")
    try:
        return build_task(container(given))
    except (ValueError, TypeError) as err:
        raise UsageError(f"task=: {err}") from err


def checkpoint_axis(loaded: Any, override: Any) -> int:
    """The slice axis: ``axis=`` when set, else the checkpoint's ``data.axis`` when it is one axis, else 2."""
    from omegaconf import OmegaConf

    if override is not None:
        if isinstance(override, bool) or override not in (0, 1, 2):
            raise UsageError(f"axis={override!r} is not one of 0, 1, 2")
        return int(override)
    if loaded is not None:
        axis = OmegaConf.select(loaded.config, "data.axis", default=None)
        if isinstance(axis, int) and axis in (0, 1, 2):
            return axis
    return 2


def unit_layout(model: Any, task: Any, axis: Any = None) -> Layout:
    """The units of work: the model's 2D slices (along :func:`checkpoint_axis`) or 3D volumes; without a
    model, the task's ``spatial_dims``."""
    spatial_dims = model.spatial_dims if model is not None else int(task.spatial_dims)
    return Layout(spatial_dims=spatial_dims, axis=checkpoint_axis(model, axis))


# ------------------------------------------------------------------------------------------------ sampling
def config_dir() -> Path:
    """medrecon's ``conf/`` folder (inside the installed package, or at the top of a checkout)."""
    from medrecon.physics.registry import task_conf_dir

    return task_conf_dir().parent


def group_config(group: str, name: str) -> dict[str, Any]:
    """The parsed ``conf/<group>/<name>.yaml`` (e.g. ``sampler``, ``mmse``).

    Raises:
        UsageError: no such file, naming the ones there are.
    """
    import yaml

    folder = config_dir() / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise UsageError(f"{group}={name!r} is not one of {known}")
    return dict(yaml.safe_load(path.read_text()) or {})


def command_defaults(command: str) -> dict[str, Any]:
    """The top-level defaults of ``conf/<command>.yaml`` as plain data (not resolved; ``???`` kept as is)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(config_dir() / f"{command}.yaml"), resolve=False)


def _component(spec: Any, group: str, cls: type, target: str, overrides: dict[str, Any]) -> Any:
    """``spec`` (an instance, a ``conf/<group>`` name or a config mapping) as an instance of ``cls``."""
    if isinstance(spec, cls):
        fields: dict[str, Any] = {}
        instance = spec
    else:
        if isinstance(spec, str):
            fields = group_config(group, spec)
        elif isinstance(spec, Mapping) or hasattr(spec, "items"):
            fields = dict(container(spec))
        else:
            raise UsageError(f"{group}={spec!r} must be a name (e.g. conf/{group}/*.yaml) or a mapping")
        instance = None
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        if instance is not None:
            return replace(instance, **given) if given else instance
        named = fields.pop("_target_", target)
        if named != target:  # a config that names another class: what Hydra builds from it, as before
            from hydra.utils import instantiate

            return instantiate({"_target_": named, **fields, **given})
        return cls(**{**fields, **given})
    except TypeError as err:
        raise UsageError(f"{group}: {err}") from err
    except ValueError as err:
        raise UsageError(str(err)) from err


def sampler_config(spec: Any, steps: int | None = None) -> Any:
    """A validated ``SamplerConfig`` from a name (``"mmse"``: ``conf/sampler/mmse.yaml``), a config mapping
    (a composed ``sampler=`` group) or a ``SamplerConfig``; ``steps`` replaces its steps when given.

    Raises:
        UsageError: an unknown sampler or option, or an invalid value (steps < 1, ...).
    """
    from medrecon.diffusion.samplers import SamplerConfig

    return _component(spec, "sampler", SamplerConfig, _SAMPLER_TARGET, {"steps": steps})


def guidance_config(spec: Any, scale: float | None = None) -> Any:
    """A validated ``GuidanceConfig`` from a name (``"dc"``, ``"dps"``, ``"none"``: ``conf/guidance/``), a
    config mapping or a ``GuidanceConfig``; ``scale`` (DPS) replaces its scale when given; ``None`` is
    ``none``.

    Raises:
        UsageError: an unknown guidance or option, or a negative scale.
    """
    from medrecon.diffusion.guidance import GuidanceConfig

    return _component(
        "none" if spec is None else spec, "guidance", GuidanceConfig, _GUIDANCE_TARGET, {"scale": scale}
    )


# ------------------------------------------------------------------------------------------------ methods
def build_method(
    name: str,
    task: Any,
    *,
    model: Any = None,
    sampler: Any = None,
    guidance: Any = None,
    samples: int = 1,
    precision: str = "fp32",
    compile: bool = False,
    blend: str = "none",
    label: str = "checkpoint",
    log: logging.Logger | None = None,
) -> Any:
    """The engine's callable for one method (``medrecon.recon.methods``).

    With ``model`` (a ``LoadedModel``): the estimator its checkpoint was trained for
    (``methods.model_method``: diffusion sampling with ``sampler``/``guidance``/``samples``, or a regression
    model's one evaluation), mixed with a classical method when ``blend`` says so (``medrecon.recon.blend``);
    ``name`` and ``label`` name it in messages. Without: the baseline ``name`` (``blend`` unused).

    Raises:
        UsageError: an unknown baseline, one that does not apply to ``task``, or an option a method refuses.
    """
    from medrecon.baselines import BASELINES
    from medrecon.recon.methods import BaselineMethod, model_method

    try:
        if model is not None:
            return model_method(
                model,
                task,
                sampler,
                guidance,
                samples=samples,
                precision=precision,
                compile=compile,
                blend=blend,
                log=log,
                label=label,
            )
        if name not in BASELINES:
            raise UsageError(f"method={name!r} is not a baseline ({', '.join(BASELINES)}) and has no model")
        return BaselineMethod(name, task)
    except ValueError as err:
        raise UsageError(str(err)) from err


def base_encoder(model: Any, options: Any, modality: str | None) -> Any:
    """The unfitted intensity encoder of an item: the checkpoint's, else ``options`` (``conf/*.yaml``
    ``encoder``) for the item's modality (``medrecon.data.encoder.build_encoder``)."""
    if model is not None:
        return model.encoder
    from medrecon.data.encoder import build_encoder

    return build_encoder(container(options), modality)


# ------------------------------------------------------------------------------------------------ one method
@dataclass
class Setup:
    """Everything a reconstruction with one method resolved before the first item.

    Attributes:
        method_name: ``diffusion``, ``regression`` (a regression checkpoint) or a baseline.
        method: the engine's callable (``medrecon.recon.methods``).
        task: the task (the checkpoint's, or ``task=`` for baselines).
        encoder: the checkpoint's ``Encoder``, or ``None`` (per item: ``encoder_options`` for its modality).
        layout: how volumes are cut into units.
        context: 2.5D neighbours per side the method's network takes (0 for baselines).
        device: where the method runs.
        settings: reconstruct's resume key (``medrecon.recon.run.settings_key``); empty in the API.
        spacing: the ``SpacingPolicy`` (``medrecon.recon.spacing``).
        seed: the run's seed (every unit's seed derives from it and the item id).
        encoder_options: the ``encoder`` options for items without a checkpoint.
        options: the validated :class:`RunOptions` it was built with.
    """

    method_name: str
    method: Any
    task: Any
    encoder: Any
    layout: Layout
    context: int
    device: torch.device
    settings: str = ""
    spacing: Any = None
    seed: int = 0
    encoder_options: Any = None
    options: RunOptions | None = None


def check_method_name(name: str) -> str:
    """``name`` when it is ``diffusion`` or a baseline; else a usage error naming the allowed ones."""
    from medrecon.baselines import BASELINES
    from medrecon.recon.methods import DIFFUSION

    allowed = (DIFFUSION, *BASELINES)
    if name not in allowed:
        raise UsageError(f"method={name!r} is not one of {', '.join(allowed)}")
    return name


def reconstruct_setup(
    method_name: str,
    *,
    loaded: Any,
    task: Any,
    sampler: Any,
    guidance: Any,
    options: RunOptions,
    axis: Any = None,
    spacing: Mapping[str, Any] | None = None,
    encoder: Any = None,
) -> Setup:
    """The :class:`Setup` of a reconstruction with ``method_name`` (``diffusion`` or a baseline).

    Args:
        loaded: the checkpoint (``LoadedModel``), required for ``diffusion``; a regression checkpoint runs as
            method ``regression``.
        task, sampler, guidance: as :func:`resolve_task`, :func:`sampler_config`, :func:`guidance_config`
            take them (sampler and guidance are used by ``diffusion`` only).
        options: the validated :class:`RunOptions`.
        axis: ``axis=`` (``None``: the checkpoint's).
        spacing: ``{"spacing": "native"|"auto", "spacing_tolerance": 1.5}`` (``medrecon.recon.spacing``).
        encoder: the ``encoder`` options for items without a checkpoint.

    Raises:
        UsageError: see the functions above; ``diffusion`` without a checkpoint.
    """
    from medrecon.recon.methods import DIFFUSION, REGRESSION
    from medrecon.recon.spacing import spacing_policy

    check_method_name(method_name)
    if method_name == DIFFUSION and loaded is None:
        raise UsageError("method=diffusion needs checkpoint=FILE (a model from 'medrecon train')")
    task_obj = resolve_task(task, loaded)
    layout = unit_layout(loaded, task_obj, axis)
    if method_name == DIFFUSION:
        method = build_method(  # a regression checkpoint runs its one evaluation (method "regression")
            method_name,
            task_obj,
            model=loaded,
            sampler=sampler_config(sampler),
            guidance=guidance_config(guidance),
            samples=options.samples,
            precision=options.precision,
            compile=options.compile,
            blend=options.blend,
            log=log,
        )
        method_name = method.name
    else:
        if options.samples > 1:
            log.warning("samples=%d is ignored: baseline %s is deterministic", options.samples, method_name)
        method = build_method(method_name, task_obj)
    context = loaded.context if (loaded is not None and method_name in (DIFFUSION, REGRESSION)) else 0
    return Setup(
        method_name=method_name,
        method=method,
        task=task_obj,
        encoder=loaded.encoder if loaded is not None else None,
        layout=layout,
        context=context,
        device=options.device,
        spacing=spacing_policy(spacing or {}, loaded, task_obj),
        seed=options.seed,
        encoder_options=encoder,
        options=options,
    )
