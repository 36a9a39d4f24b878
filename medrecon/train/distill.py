"""``medrecon distill``: progressive distillation of a trained checkpoint into a few-step sampler.

``medrecon distill checkpoint=TEACHER.safetensors manifest=FILE.jsonl out=RUN_DIR [distill.student_steps=2]
[sampler.steps=8] [train.steps=N]`` (docs/training.md, "Distillation"). The teacher's ``sampler=mmse`` grid of
``sampler.steps`` levels is halved round by round (8 -> 4 -> 2) until ``distill.student_steps``; each round is
one training run of :class:`~medrecon.train.loop.Trainer` with the loss
:class:`~medrecon.diffusion.distill.ProgressiveDistillLoss`, its student initialised from the round's teacher
(the previous round's EMA weights), on the data pipeline training uses (the teacher's stored ``data`` settings,
held-out slabs included, with ``+data.KEY=VALUE`` on top). Everything training has comes with it: EMA,
checkpoints, ``resume=auto|true|false``, ``train.stop_at``, TensorBoard, validation, DDP under torchrun.

The run directory::

    RUN_DIR/distill.log
    RUN_DIR/steps_4/        round 1: a training run directory (ckpt_*, state_*, last, best, tb/)
    RUN_DIR/steps_2/        round 2 ...
    RUN_DIR/last.safetensors   the final student (written when the last round is done)

Every checkpoint has the teacher's format and network, plus the ``distill`` record (steps, grid, the original
teacher's digest), so reconstruct and evaluate sample it on its grid. ``train.stop_at`` counts steps over all
rounds (round ``k``'s steps are ``(k - 1) * train.steps + 1 .. k * train.steps``); a rerun continues where it
stopped, and a finished round is never redone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medrecon.device import resolve_device
from medrecon.distributed import (
    destroy_process_group,
    env_from_environ,
    init_process_group,
    process_device,
    quiet_non_main,
)
from medrecon.errors import UsageError
from medrecon.train.loop import Trainer, seed_for
from medrecon.train.run import run_directory

log = logging.getLogger("medrecon.distill")


@dataclass(frozen=True)
class DistillSettings:
    """The ``distill`` config node.

    Attributes:
        teacher_steps: the teacher's ``sampler=mmse`` steps (replaces ``sampler.steps``): the grid halved.
            Unused when the teacher is itself distilled (its recorded grid is halved).
        student_steps: network evaluations per sample of the final student (``teacher_steps`` divided by a
            power of two: 8 -> 4, 2 or 1).
        renoise_fraction: fraction of training states renoised at the student's level 1 as ``renoise=1``
            sampling does (the posterior draws of ``samples > 1``); 0 trains the deterministic path only.
    """

    teacher_steps: int = 8
    student_steps: int = 2
    renoise_fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in ("teacher_steps", "student_steps"):
            steps = getattr(self, name)
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"distill.{name} must be an integer >= 1, got {steps!r}")
        if isinstance(self.renoise_fraction, bool) or not 0.0 <= self.renoise_fraction <= 1.0:
            raise ValueError(f"distill.renoise_fraction must be in [0, 1], got {self.renoise_fraction!r}")

    @classmethod
    def from_cfg(cls, node: Any) -> DistillSettings:
        """Build from ``cfg.distill``; unknown keys are an error that lists the known ones."""
        values = dict(node or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown distill option(s) {unknown}; known: {sorted(known)}")
        if isinstance(values.get("renoise_fraction"), int) and not isinstance(
            values["renoise_fraction"], bool
        ):
            values["renoise_fraction"] = float(values["renoise_fraction"])
        return cls(**values)


@dataclass(frozen=True)
class Plan:
    """The rounds of a distillation: the first teacher's grid, each student's grid, and what the records say."""

    teacher_grid: tuple[float, ...]
    grids: list[tuple[float, ...]]
    teacher_steps: int
    teacher_digest: str


def plan_rounds(cfg: DictConfig, teacher: Any, checkpoint: str, options: DistillSettings) -> Plan:
    """The grids to distil: the teacher's ``sampler=mmse`` grid (``cfg.sampler`` with ``options.teacher_steps``
    steps), or, for a teacher that is itself distilled, its recorded grid (``cfg.sampler`` then unused), halved
    down to ``options.student_steps``.

    Raises:
        UsageError: another sampler than ``mmse``, or step counts that do not halve into each other.
    """
    from hydra.utils import instantiate

    from medrecon.checkpoint import checkpoint_digest
    from medrecon.diffusion.distill import DISTILLED_SAMPLERS, halving_grids

    record = teacher.distill
    if record is not None:
        grid, teacher_steps, digest = record.sigmas, record.teacher_steps, record.teacher
        log.info(
            "the teacher is distilled (%d steps): halving its grid; sampler= and distill.teacher_steps not used",
            record.steps,
        )
    else:
        sampler = instantiate(cfg.sampler, steps=options.teacher_steps)
        if sampler.name not in DISTILLED_SAMPLERS:
            raise UsageError(
                f"sampler={sampler.name}: distillation follows the {', '.join(DISTILLED_SAMPLERS)} sampler's "
                "trajectory (its estimate, then DDIM refinement); use sampler=mmse sampler.steps=N"
            )
        grid = tuple(float(s) for s in sampler.sigmas().tolist())
        teacher_steps, digest = int(sampler.steps), checkpoint_digest(checkpoint, "ema")
    try:
        grids = halving_grids(grid, options.student_steps)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return Plan(tuple(grid), grids, teacher_steps, digest)


def effective_config(cfg: DictConfig, teacher_config: Any) -> DictConfig:
    """The run config as it is stored and compared for resume: ``cfg`` with ``data`` replaced by the teacher's
    stored data settings merged with ``cfg.data`` (the overrides)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    base = OmegaConf.select(teacher_config, "data", default=None) or {}
    merged = OmegaConf.merge(OmegaConf.create(_plain(base)), OmegaConf.create(container.get("data") or {}))
    container["data"] = OmegaConf.to_container(merged, resolve=True)
    return OmegaConf.create(container)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def round_stop(stop_at: Any, index: int, steps: int, rounds: int) -> tuple[bool, int | None]:
    """``(runs, stop_at)`` of round ``index`` (0-based) for the global ``train.stop_at``: whether the round
    runs at all, and where it stops (``None``: at ``steps``).

    Raises:
        UsageError: ``stop_at`` is not null or an integer in ``[1, rounds * steps]``.
    """
    if stop_at is None:
        return True, None
    if isinstance(stop_at, bool) or not isinstance(stop_at, int) or not 1 <= stop_at <= rounds * steps:
        raise UsageError(
            f"train.stop_at counts steps over all {rounds} round(s): null or in [1, {rounds * steps}], "
            f"got {stop_at!r}"
        )
    first = index * steps
    if stop_at <= first:
        return False, None
    return True, (stop_at - first if stop_at < first + steps else None)


class DistillTrainer(Trainer):
    """A :class:`Trainer` whose checkpoints carry the round's ``distill`` record, whose student starts from the
    teacher's weights, and which resumes only a run of the same record (teacher and grid)."""

    def __init__(self, *, record: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record

    def start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Initialise the student (raw and EMA weights) from the teacher's state dict."""
        self.precond.load_state_dict(state)
        self.ema.module.load_state_dict(state)

    def resume(self) -> bool:
        steps = self.run_dir.steps()
        if steps:
            check_record(self.run_dir.ckpt(steps[-1]), self.record)
        return super().resume()

    def _checkpoint_extras(self) -> dict[str, Any]:
        return {**super()._checkpoint_extras(), "distill": self.record}


def check_record(path: Path, record: Any) -> None:
    """Refuse to continue from ``path`` when it records another distillation (teacher, grid or steps).

    Raises:
        UsageError: the stored record differs (or is missing).
    """
    from medrecon.checkpoint import read_metadata

    stored = read_metadata(path)["distill"]
    if stored != record:
        what = (
            "no distillation" if stored is None else f"{stored.steps} steps of teacher {stored.teacher[:12]}"
        )
        raise UsageError(
            f"cannot continue from {path.name}: it records {what}, this run distils {record.steps} steps of "
            f"teacher {record.teacher[:12]} (grid {list(record.sigmas)}); choose another out="
        )


def _finished(run_dir: Any, steps: int) -> bool:
    done = run_dir.steps()
    return bool(done) and done[-1] >= steps


def _resume_decision(round_dirs: list[Any], cfg: DictConfig) -> bool:
    """``resume=`` applied to the run: the newest round folder holding a run decides (as for training)."""
    from medrecon.train.resume import should_resume

    started = [rd for rd in round_dirs if rd.has_run()]
    return should_resume(started[-1] if started else round_dirs[0], cfg)


def _teacher_module(spec: Any, state: dict[str, torch.Tensor], device: torch.device) -> torch.nn.Module:
    teacher = spec.build_precond()
    teacher.load_state_dict(state)
    return teacher.to(device).eval().requires_grad_(False)


@dataclass
class Setting:
    """What every round shares: the teacher checkpoint, the data, the stored config, where it runs."""

    cfg: DictConfig
    effective: DictConfig
    teacher: Any
    data: Any
    options: DistillSettings
    device: torch.device
    env: Any
    seed: int


def round_trainer(
    setting: Setting,
    settings: Any,
    record: Any,
    state: dict[str, torch.Tensor],
    teacher_grid: tuple[float, ...],
    run_dir: Any,
) -> DistillTrainer:
    """The training run of one round: the loss around the round's teacher (``state`` on ``teacher_grid``),
    validation with the student's sampler, the student initialised from the teacher."""
    from hydra.utils import instantiate

    from medrecon.diffusion.distill import GridSampler, ProgressiveDistillLoss
    from medrecon.train.validate import Validator

    spec, data, device = setting.teacher.spec, setting.data, setting.device
    loss_fn = ProgressiveDistillLoss(
        _teacher_module(spec, state, device), teacher_grid, spec.sigma_data, setting.options.renoise_fraction
    )
    validator = None
    if data.val is not None and data.val_keys and settings.val_every:
        validator = Validator(
            task=setting.teacher.task,
            dataset=data.val,
            keys=data.val_keys,
            sampler=GridSampler(record.sigmas),
            guidance=instantiate(setting.cfg.guidance),
            context=data.context,
            spatial_dims=spec.spatial_dims,
            seed=setting.seed,
            device=device,
            batch_size=settings.batch_size,
        )
    trainer = DistillTrainer(
        record=record,
        settings=settings,
        spec=spec,
        task=setting.teacher.task,
        data=data,
        loss_fn=loss_fn,
        config=setting.effective,
        out=run_dir.root,
        device=device,
        env=setting.env,
        seed=seed_for(setting.seed, record.steps),  # each round draws its own data order and noise
        validator=validator,
        num_workers=int(setting.effective.data.get("num_workers", 0)),
    )
    trainer.start_from(state)
    return trainer


def distill_data(effective: DictConfig, manifest: Any, teacher: Any) -> Any:
    """The training data of the teacher's stored (and overridden) data settings; its encoder and 2.5D context
    must be the teacher's.

    Raises:
        UsageError: the data cannot be built, or its encoding or context differs from the teacher's.
    """
    from medrecon.data.build import build_training_data

    try:
        data = build_training_data(effective.data, manifest, tuple(teacher.task.scale))
    except ValueError as err:
        raise UsageError(str(err)) from err
    if data.encoder.to_dict() != teacher.encoder.to_dict() or data.context != teacher.spec.context:
        raise UsageError(
            "the data settings give another intensity encoding or 2.5D context than the teacher was trained "
            "with; leave data.encoder and data.context as the teacher's (its stored data settings)"
        )
    return data


def run(cfg: DictConfig) -> int:
    """Distil; returns the exit code (0 done or stopped at ``train.stop_at``, 1 stopped by non-finite steps)."""
    from medrecon.checkpoint import load_checkpoint, load_weights
    from medrecon.diffusion.distill import DistillRecord
    from medrecon.train.rundir import RunDir
    from medrecon.train.settings import TOP_LEVEL, TrainSettings

    env = env_from_environ()
    quiet_non_main(env.rank)
    train_node = _plain(cfg.train)
    stop_at = train_node.pop("stop_at", None)  # counts over all rounds (round_stop), not within one
    try:
        options = DistillSettings.from_cfg(cfg.get("distill"))
        full = TrainSettings.from_cfg(train_node, **{k: cfg[k] for k in TOP_LEVEL if k in cfg})
    except ValueError as err:
        raise UsageError(str(err)) from err
    device = process_device(resolve_device(cfg.device), env)
    teacher = load_checkpoint(str(cfg.checkpoint), device="cpu", weights="ema")
    if teacher.spec.objective != "diffusion":
        raise UsageError(
            f"checkpoint={Path(str(cfg.checkpoint)).name} is a {teacher.spec.objective} model; distillation "
            "needs a diffusion model (objective=diffusion)"
        )
    plan = plan_rounds(cfg, teacher, str(cfg.checkpoint), options)
    effective = effective_config(cfg, teacher.config)
    out = run_directory(cfg)
    round_dirs = [RunDir(out / f"steps_{len(grid) - 1}") for grid in plan.grids]
    round_stop(stop_at, 0, full.steps, len(plan.grids))  # checks train.stop_at before anything runs
    resume = _resume_decision(round_dirs, effective)
    init_process_group(env, device)
    try:
        data = distill_data(effective, cfg.manifest, teacher)
        setting = Setting(cfg, effective, teacher, data, options, device, env, int(cfg.seed))
        state = {k: v.detach().clone() for k, v in teacher.precond.state_dict().items()}
        teacher_grid = plan.teacher_grid
        for index, (grid, run_dir) in enumerate(zip(plan.grids, round_dirs)):
            record = DistillRecord(
                steps=len(grid) - 1,
                sigmas=grid,
                teacher_steps=plan.teacher_steps,
                teacher=plan.teacher_digest,
            )
            if _finished(run_dir, full.steps):  # never redone: its EMA weights are the next round's teacher
                check_record(run_dir.ckpt(run_dir.steps()[-1]), record)
                state = load_weights(run_dir.ckpt(run_dir.steps()[-1]), "ema", "cpu")
                log.info("round %d (%d steps) is done: %s", index + 1, record.steps, run_dir.last)
                teacher_grid = grid
                continue
            runs, round_stop_at = round_stop(stop_at, index, full.steps, len(plan.grids))
            if not runs:
                log.info("stopped before round %d (train.stop_at=%s)", index + 1, stop_at)
                return 0
            settings = TrainSettings(**{**asdict(full), "stop_at": round_stop_at})
            trainer = round_trainer(setting, settings, record, state, teacher_grid, run_dir)
            log.info(
                "round %d/%d: %d -> %d steps on grid [%s], %d optimiser steps, batch %d, %s",
                index + 1,
                len(plan.grids),
                len(teacher_grid) - 1,
                record.steps,
                ", ".join(f"{s:.4g}" for s in grid),
                settings.steps,
                settings.batch_size,
                device,
            )
            if resume:
                trainer.resume()
            code = trainer.fit()
            if code:
                return code
            if trainer.step < settings.steps:
                log.info("stopped at step %d of round %d (train.stop_at)", trainer.step, index + 1)
                return 0
            state = {k: v.detach().clone() for k, v in trainer.ema.module.state_dict().items()}
            teacher_grid = grid
        if env.is_main:
            round_dirs[-1].copy_to(round_dirs[-1].last, out / "last.safetensors")
            log.info("done: %s (%d network evaluations per sample)", out / "last.safetensors", record.steps)
        return 0
    finally:
        destroy_process_group()
