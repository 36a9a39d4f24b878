"""Training options of latent diffusion: which stage a run is, the stage-1 checkpoint, the latent scale.

Two spellings of each stage (docs/training.md, "Latent diffusion"):

- stage 1, the autoencoder: ``objective=autoencoder model=autoencoder_kl``, or ``model=autoencoder`` (a model
  config naming an autoencoder of ``medrecon.nn.registry.AUTOENCODERS`` implies the objective);
- stage 2, the latent denoiser: ``objective=latent autoencoder=AE.safetensors [model=unet_tiny]``, or
  ``model=latent model.autoencoder=AE.safetensors`` (a ``model.autoencoder`` key implies the objective and is
  not a network option).

Stage 2 loads the stage-1 checkpoint under the same checks as any checkpoint, refuses one that is not an
autoencoder of the run's ``spatial_dims`` or whose intensity encoder differs from the run's (the autoencoder
learned one mapping of scanner units to [-1, 1]), and fits the latent scale on training samples: ``sigma_data /
std`` of their posterior means (``medrecon.latent.codec.fit_scale``). A resumed run keeps the scale its
checkpoint recorded.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medrecon.errors import UsageError

log = logging.getLogger(__name__)

AUTOENCODER_KEY = "autoencoder"  # model.autoencoder (stage 2 written as a model option)


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def training_objective(cfg: DictConfig) -> str:
    """``objective=``: ``diffusion``, ``regression``, ``autoencoder`` or ``latent`` (``medrecon.checkpoint.
    OBJECTIVES``), with the two implied spellings of the module docstring.

    Raises:
        UsageError: an unknown value, or a model that contradicts it (an autoencoder trained as a denoiser, a
            ``model.autoencoder`` with another objective).
    """
    from medrecon.checkpoint import AUTOENCODER_OBJECTIVE, LATENT_OBJECTIVE, OBJECTIVES
    from medrecon.nn.registry import is_autoencoder

    value = cfg.get("objective", OBJECTIVES[0])
    if not isinstance(value, str) or value not in OBJECTIVES:
        raise UsageError(f"objective={value!r} is not one of {', '.join(OBJECTIVES)}")
    model = _container(cfg.get("model")) or {}
    if is_autoencoder(model):
        if value not in (OBJECTIVES[0], AUTOENCODER_OBJECTIVE):
            raise UsageError(
                f"model={model.get('_target_')} is an autoencoder: it trains with objective=autoencoder, "
                f"not {value}"
            )
        return AUTOENCODER_OBJECTIVE
    if value == AUTOENCODER_OBJECTIVE:
        raise UsageError("objective=autoencoder needs an autoencoder model: model=autoencoder_kl")
    if isinstance(model, dict) and AUTOENCODER_KEY in model:
        if value not in (OBJECTIVES[0], LATENT_OBJECTIVE):
            raise UsageError(f"model.autoencoder is for objective=latent, not {value}")
        return LATENT_OBJECTIVE
    return value


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The network's config: ``cfg.model`` without ``model.autoencoder`` (a file, not a network option), and
    ``conf/model/latent.yaml``'s ``LatentUNet`` stored as the ``UNet`` it is (``medrecon.latent.network``)."""
    from medrecon.latent.network import STORED_TARGET, TARGET

    model = dict(_container(cfg.model))
    model.pop(AUTOENCODER_KEY, None)
    if model.get("_target_") == TARGET:
        model["_target_"] = STORED_TARGET
    return model


def patch_factors(task: Any, cfg: DictConfig, stage1: Any = None) -> tuple[int, ...]:
    """What every side of a training patch must be a multiple of (besides the U-Net's 8): the task's scale
    and, for an autoencoder (``cfg.model``) or a latent run (``stage1``), the autoencoder's factor."""
    from medrecon.nn.registry import autoencoder_factor, is_autoencoder

    scale = tuple(int(s) for s in task.scale)
    model = _container(cfg.get("model")) or {}
    autoencoder = stage1.spec.model if stage1 is not None else model if is_autoencoder(model) else None
    if autoencoder is None:
        return scale
    factor = autoencoder_factor(autoencoder)
    return tuple(math.lcm(s, factor) for s in scale)


def autoencoder_path(cfg: DictConfig) -> str:
    """The stage-1 checkpoint of a latent run: ``autoencoder=`` or ``model.autoencoder=``.

    Raises:
        UsageError: neither given, both given and different, or the file does not exist.
    """
    top = cfg.get(AUTOENCODER_KEY)
    nested = OmegaConf.select(cfg, f"model.{AUTOENCODER_KEY}", default=None)
    if top and nested and str(top) != str(nested):
        raise UsageError(f"autoencoder={top} and model.autoencoder={nested} differ: give one")
    path = top or nested
    if not path:
        raise UsageError(
            "objective=latent needs the stage-1 checkpoint: autoencoder=AE.safetensors (from 'medrecon train "
            "objective=autoencoder model=autoencoder_kl ...')"
        )
    if not Path(str(path)).is_file():
        raise UsageError(f"autoencoder={path} does not exist")
    return str(path)


def load_stage1(path: str, device: torch.device, spatial_dims: int) -> Any:
    """The stage-1 checkpoint (``LoadedModel``; its ``precond`` is the autoencoder), EMA weights.

    Raises:
        UsageError: it fails a check, is not an autoencoder, or has other ``spatial_dims``.
    """
    from medrecon.checkpoint import AUTOENCODER_OBJECTIVE, load_checkpoint

    stage1 = load_checkpoint(path, device=device, weights="ema")
    name = Path(path).name
    if stage1.spec.objective != AUTOENCODER_OBJECTIVE:
        raise UsageError(
            f"autoencoder={name} is a {stage1.spec.objective} model; stage 2 needs a checkpoint of "
            "objective=autoencoder"
        )
    if stage1.spatial_dims != spatial_dims:
        raise UsageError(
            f"autoencoder={name} is a {stage1.spatial_dims}D autoencoder; the data are {spatial_dims}D "
            "(data.spatial_dims)"
        )
    return stage1


def check_encoder(stage1: Any, encoder: Any, path: str) -> None:
    """Refuse a run whose intensity encoder differs from the one the autoencoder was trained with.

    Raises:
        UsageError: naming the fields that differ.
    """
    ours, theirs = encoder.to_dict(), stage1.encoder.to_dict()
    if ours != theirs:
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise UsageError(
            f"the run's intensity encoder differs from autoencoder={Path(path).name}'s in {differ}: train "
            "stage 2 with the data.encoder options of stage 1"
        )


def stored_scale(run_dir: Any) -> float | None:
    """The latent scale of the newest checkpoint of ``run_dir`` (``None`` when there is none)."""
    from medrecon.checkpoint import read_metadata

    steps = run_dir.steps()
    if not steps:
        return None
    latent = read_metadata(run_dir.ckpt(steps[-1]))["spec"].get("latent")
    return None if latent is None else float(latent["scale"])


def scale_batches(dataset: Any, count: int, batch_size: int, seed: int, device: torch.device) -> list[Any]:
    """``count`` training samples (the first images of the sampler's kind of keys ``(i, seed)``), batched."""
    from medrecon.train.loop import seed_for

    n = len(dataset)
    keys = [(i % n, seed_for(seed, 0x5CA1E, i)) for i in range(max(1, count))]
    return [
        torch.stack([dataset[k][:1] for k in keys[i : i + batch_size]]).to(device)
        for i in range(0, len(keys), batch_size)
    ]


def latent_codec(
    cfg: DictConfig,
    stage1: Any,
    dataset: Any,
    sigma_data: float,
    seed: int,
    device: torch.device,
    stored: Any,
) -> Any:
    """The frozen codec of a latent run: the stage-1 autoencoder, ``latent.condition``, and the scale (the
    stored one when resuming, else fitted on ``latent.scale_samples`` training samples).

    Raises:
        UsageError: an unknown ``latent`` option or condition mode.
    """
    from medrecon.latent.codec import CONDITIONS, LatentCodec, fit_scale
    from medrecon.nn.registry import autoencoder_factor

    options = dict(_container(cfg.get("latent") or {}))
    unknown = sorted(set(options) - {"condition", "scale_samples"})
    if unknown:
        raise UsageError(f"unknown latent option(s) {unknown}; known: ['condition', 'scale_samples']")
    condition = options.get("condition", "encode")
    if condition not in CONDITIONS:
        raise UsageError(f"latent.condition={condition!r} is not one of {', '.join(CONDITIONS)}")
    samples = int(options.get("scale_samples", 16))
    autoencoder = stage1.precond
    factor = autoencoder_factor(stage1.spec.model)
    if stored is not None:
        scale = float(stored)
        log.info("latent scale %.6g (from the run's checkpoint)", scale)
    else:
        batches = scale_batches(dataset, samples, 4, seed, device)
        scale = fit_scale(autoencoder, batches, sigma_data)
        log.info("latent scale %.6g = sigma_data %g / std of %d training latents", scale, sigma_data, samples)
    if not math.isfinite(scale):
        raise UsageError(f"latent scale {scale!r} is not finite")
    return LatentCodec(autoencoder, factor, scale, condition, tile=autoencoder_window(stage1, factor))


def autoencoder_window(stage1: Any, factor: int) -> tuple[int, ...] | None:
    """The stage-1 training patch on the latent grid (``None`` when its config does not say): the window the
    autoencoder encodes and decodes larger volumes in. GroupNorm normalises over the window, so the training
    size reproduces the statistics it learned (docs/training.md, "Latent diffusion": measured)."""
    from medrecon.data.transforms import patch_shape

    size = OmegaConf.select(stage1.config, "data.patch_size", default=None)
    if size is None:
        return None
    try:
        patch = patch_shape(size if isinstance(size, int) else [int(s) for s in size], stage1.spatial_dims)
    except ValueError:
        return None
    return tuple(-(-p // factor) for p in patch)
