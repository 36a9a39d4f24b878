"""``medrecon train``: build task, data, model and loop from the composed config and train.

Entry point for ``medrecon train manifest=FILE.jsonl task=TASK model=MODEL out=RUN_DIR train.steps=N`` (see
docs/training.md); also under ``torchrun --nproc_per_node=N -m medrecon.cli train ...`` for data-parallel
runs.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("medrecon.train")


def _container(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_task(task_cfg: Any, spatial_dims: int) -> tuple[Any, dict[str, Any]]:
    """Build ``cfg.task`` for ``spatial_dims`` (set on the task when it takes the option); returns the
    task and the config it was built from (stored in checkpoints). The task is built through the closed
    registry that loading uses (``medrecon.physics.registry``), so what training stores is what loads."""
    from medrecon.physics.registry import build_task as registry_task

    task_dict = _container(task_cfg)
    if "spatial_dims" in task_dict:
        task_dict["spatial_dims"] = spatial_dims
    task = registry_task(task_dict)
    if getattr(task, "spatial_dims", spatial_dims) != spatial_dims:
        raise UsageError(
            f"task {task_dict.get('_target_')} works on spatial_dims={task.spatial_dims}, "
            f"the data on {spatial_dims}"
        )
    return task, task_dict


def training_objective(cfg: DictConfig) -> str:
    """``objective=``: ``diffusion`` (the EDM denoiser, ``cfg.loss``), ``regression`` (the supervised
    baseline, ``cfg.regression``: the same network mapping the condition to the image in one evaluation),
    ``autoencoder`` or ``latent`` (the two stages of latent diffusion; ``medrecon.train.latent``, which also
    reads the spellings ``model=autoencoder`` and ``model.autoencoder=FILE``).

    Raises:
        UsageError: any other value, or a model that contradicts it.
    """
    from medrecon.train.latent import training_objective as objective_of

    return objective_of(cfg)


def build_loss(cfg: DictConfig, objective: str, codec: Any = None) -> Any:
    """The loss of ``objective``: ``EDMLoss`` from ``cfg.loss``; ``RegressionLoss`` from ``cfg.regression``;
    ``AutoencoderLoss`` from ``cfg.autoencoder_loss``; ``LatentLoss`` (``EDMLoss`` through the frozen
    ``codec``); always with the ``sigma_data`` of ``cfg.loss`` (one ``sigma_data`` per model)."""
    from hydra.utils import instantiate

    if objective == "diffusion":
        return instantiate(cfg.loss)
    if objective == "latent":
        from medrecon.latent.loss import LatentLoss

        return LatentLoss(instantiate(cfg.loss), codec)
    if objective == "autoencoder":
        from medrecon.latent.loss import AutoencoderLoss

        options = _container(cfg.get("autoencoder_loss") or {})
        unknown = sorted(set(options) - {"norm", "kl_weight"})
        if unknown:
            raise ValueError(f"unknown autoencoder_loss option(s) {unknown}; known: ['kl_weight', 'norm']")
        return AutoencoderLoss(sigma_data=float(cfg.loss.sigma_data), **options)
    from medrecon.diffusion.regression import RegressionLoss

    options = _container(cfg.get("regression") or {})
    unknown = sorted(set(options) - {"norm"})
    if unknown:
        raise ValueError(f"unknown regression option(s) {unknown}; known: ['norm']")
    return RegressionLoss(sigma_data=float(cfg.loss.sigma_data), **options)


def validation_guidance(guidance: Any, objective: str) -> Any:
    """The validation guidance: ``cfg.guidance``, except ``dps`` for a regression model (logged, then none)."""
    if objective != "regression":
        return guidance
    from medrecon.diffusion.regression import regression_guidance

    guidance, note = regression_guidance(guidance)
    if note:
        log.info("validation: %s", note)
    return guidance


def model_spec(
    cfg: DictConfig,
    objective: str,
    task: Any,
    task_dict: dict[str, Any],
    context: int,
    loss_fn: Any,
    stage1: Any = None,
    codec: Any = None,
) -> Any:
    """The ``ModelSpec`` a run trains and stores: the network of ``cfg.model`` (without ``model.autoencoder``),
    the task, and the channels of the objective (``ModelSpec.expected_channels``); a latent spec also names
    the frozen autoencoder (``stage1``'s model config), the latent scale and the condition mode."""
    from medrecon.checkpoint import ModelSpec
    from medrecon.train.latent import model_config

    latent = None
    if codec is not None:
        latent = {"autoencoder": stage1.spec.model, "scale": codec.scale, "condition": codec.condition_mode}
        if codec.tile is not None:
            latent["window"] = list(codec.tile)
    spatial_dims = int(cfg.data.get("spatial_dims", 2))
    base = {
        "model": model_config(cfg),
        "task": task_dict,
        "spatial_dims": spatial_dims,
        "context": context,
        "sigma_data": float(loss_fn.sigma_data),
        "objective": objective,
        "latent": latent,
    }
    probe = ModelSpec(**base, image_channels=int(task.image_channels), cond_channels=0)
    image_channels, cond_channels = probe.expected_channels(task)
    return ModelSpec(**base, image_channels=image_channels, cond_channels=cond_channels)


def run_directory(cfg: DictConfig) -> Path:
    """Hydra's output folder of this job (``out``; ``out/<n>`` in a multirun), else ``cfg.out``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.out)


def run(cfg: DictConfig) -> int:
    """Train; returns the exit code (0 done, 1 stopped by non-finite steps); raises ``UsageError``."""
    from hydra.utils import instantiate

    from medrecon.data.build import build_training_data
    from medrecon.train.latent import (
        autoencoder_path,
        check_encoder,
        latent_codec,
        load_stage1,
        patch_factors,
        stored_scale,
    )
    from medrecon.train.loop import Trainer
    from medrecon.train.resume import should_resume
    from medrecon.train.rundir import RunDir
    from medrecon.train.settings import TOP_LEVEL, TrainSettings
    from medrecon.train.validate import Validator

    env = env_from_environ()
    quiet_non_main(env.rank)
    try:
        settings = TrainSettings.from_cfg(cfg.train, **{k: cfg[k] for k in TOP_LEVEL if k in cfg})
    except ValueError as err:
        raise UsageError(str(err)) from err
    objective = training_objective(cfg)
    device = process_device(resolve_device(cfg.device), env)
    seed = int(cfg.seed)
    out = run_directory(cfg)
    run_dir = RunDir(out)
    resume = should_resume(run_dir, cfg)  # resume=auto|true|false (medrecon.train.resume)
    init_process_group(env, device)
    try:
        try:  # configuration problems surface here as ValueError: report them as usage errors
            spatial_dims = int(cfg.data.get("spatial_dims", 2))
            task, task_dict = build_task(cfg.task, spatial_dims)
            stage1 = codec = None  # latent diffusion (medrecon.train.latent): the frozen stage 1
            if objective == "latent":
                stage1 = load_stage1(autoencoder_path(cfg), device, spatial_dims)
            data = build_training_data(cfg.data, cfg.manifest, patch_factors(task, cfg, stage1))
            if stage1 is not None:
                check_encoder(stage1, data.encoder, autoencoder_path(cfg))
                stored = stored_scale(run_dir) if resume else None
                sigma_data = float(cfg.loss.sigma_data)
                codec = latent_codec(cfg, stage1, data.train, sigma_data, seed, device, stored)
            loss_fn = build_loss(cfg, objective, codec)
            spec = model_spec(cfg, objective, task, task_dict, data.context, loss_fn, stage1, codec)
            validator = None
            if data.val is not None and data.val_keys and settings.val_every:
                sampler_cfg = _container(cfg.sampler)
                if cfg.val.get("steps"):
                    sampler_cfg["steps"] = int(cfg.val.steps)
                validator = Validator(
                    task=task,
                    dataset=data.val,
                    keys=data.val_keys,
                    sampler=instantiate(sampler_cfg),
                    guidance=validation_guidance(instantiate(cfg.guidance), objective),
                    objective=objective,
                    context=data.context,
                    spatial_dims=spatial_dims,
                    seed=seed,
                    device=device,
                    batch_size=settings.batch_size,
                    codec=codec,
                )
            trainer = Trainer(
                settings=settings,
                spec=spec,
                task=task,
                data=data,
                loss_fn=loss_fn,
                config=cfg,
                out=out,
                device=device,
                env=env,
                seed=seed,
                validator=validator,
                num_workers=int(cfg.data.get("num_workers", 0)),
                frozen=None if codec is None else codec.autoencoder,
                autoencoder_score=None if stage1 is None or stage1.card is None else stage1.card.validation,
            )
        except ValueError as err:
            raise UsageError(str(err)) from err
        n_params = sum(p.numel() for p in trainer.precond.parameters())
        log.info(
            "training %s (%.2fM parameters, objective %s) for task %s on %s, %d process(es), "
            "batch %d x %d accum",
            cfg.model.get("_target_", "model"),
            n_params / 1e6,
            objective,
            task_dict.get("_target_", "task"),
            device,
            env.world_size,
            settings.batch_size,
            settings.accum,
        )
        if resume and not trainer.resume():
            log.info(
                "resume=true but %s holds no checkpoint and training state yet: starting from step 0", out
            )
        try:
            code = trainer.fit()
        except torch.cuda.OutOfMemoryError as err:
            raise UsageError(
                f"out of memory on {device} at batch size {settings.batch_size} and patch "
                f"{'x'.join(map(str, data.patch))}: lower train.batch_size (raise train.accum to keep the "
                f"effective batch), data.patch_size, or use a smaller model ({err.__class__.__name__})"
            ) from err
        if env.is_main and code == 0:
            log.info("done: %s (step %d)", run_dir.last, trainer.step)
        return code
    finally:
        destroy_process_group()
