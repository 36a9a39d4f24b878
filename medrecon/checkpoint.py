"""Model checkpoints as data: safetensors weights (raw and EMA) + JSON metadata; never a pickle.

A checkpoint file holds two sets of tensors, ``raw.<name>`` (the optimiser's weights) and ``ema.<name>`` (the
exponential moving average used for sampling), named after ``EDMPrecond.state_dict()``; its safetensors
metadata (a str -> str map) holds:

- ``format`` (``medrecon-checkpoint``), ``format_version``, ``medrecon_version``, ``step``, ``param_count``;
- ``spec``: JSON of :class:`ModelSpec` (model config, task config, spatial dims, channels, 2.5D context,
  ``sigma_data``) -- enough to rebuild the denoiser and the task without the original config files;
- ``encoder``: JSON of the intensity :class:`~medrecon.data.encoder.Encoder`;
- ``config``: JSON of the resolved run config, with every file path reduced to its final name (so folder
  names, which users sometimes name after patients, never travel with a model). Manifests hold opaque ids
  only, so nothing else in the config can identify a patient.

Files are written atomically (a temporary file beside the destination, then ``os.replace``) and only when
every tensor is finite.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from medrecon import __version__
from medrecon.data.encoder import Encoder
from medrecon.io.atomic import atomic_path

FORMAT = "medrecon-checkpoint"
FORMAT_VERSION = "1"
WEIGHT_SETS: tuple[str, ...] = ("ema", "raw")


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild a denoiser and its task.

    Attributes:
        model: the ``model`` config node (``_target_`` and options, no shape facts).
        task: the ``task`` config node as instantiated (``spatial_dims`` included when the task takes it).
        spatial_dims: 2 or 3.
        image_channels: channels of the image (1).
        cond_channels: channels of the network's condition, ``task.cond_channels * (2 * context + 1)``.
        context: 2.5D neighbours on each side (0 for none).
        sigma_data: EDM's data standard deviation.
    """

    model: dict[str, Any]
    task: dict[str, Any]
    spatial_dims: int
    image_channels: int
    cond_channels: int
    context: int = 0
    sigma_data: float = 0.5

    def build_precond(self) -> nn.Module:
        """A freshly initialised ``EDMPrecond`` around ``instantiate(model, <shape facts>)``."""
        from hydra.utils import instantiate

        from medrecon.diffusion.precond import EDMPrecond

        net = instantiate(
            self.model,
            spatial_dims=self.spatial_dims,
            in_channels=self.image_channels + self.cond_channels,
            out_channels=self.image_channels,
        )
        return EDMPrecond(net, self.image_channels, self.cond_channels, sigma_data=self.sigma_data)

    def build_task(self) -> Any:
        from hydra.utils import instantiate

        return instantiate(self.task)


@dataclass
class LoadedModel:
    """A checkpoint ready to sample with.

    Attributes:
        precond: ``EDMPrecond`` on the chosen weights, in eval mode, gradients off.
        task: the task the model was trained for.
        encoder: the intensity encoder (scanner units <-> [-1, 1]).
        config: the stored run config (``DictConfig``; file paths reduced to names).
        spatial_dims: 2 or 3.
        context: 2.5D neighbours per side (see ``medrecon.data.context``).
        spec: the full model spec.
        step: the training step the weights are from.
        weights: ``"ema"`` or ``"raw"``.
    """

    precond: nn.Module
    task: Any
    encoder: Encoder
    config: Any
    spatial_dims: int
    context: int
    spec: ModelSpec
    step: int
    weights: str


def redact_paths(value: Any) -> Any:
    """A copy of a plain config container with every file-path string reduced to its final name."""
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value or os.path.exists(value)):
        return Path(value.replace("\\", "/")).name
    return value


def _state(module_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(module_or_state, nn.Module):
        return module_or_state.state_dict()
    return dict(module_or_state)


def count_parameters(state: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() for t in state.values() if t.is_floating_point()))


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    raw: nn.Module | dict[str, torch.Tensor],
    ema: nn.Module | dict[str, torch.Tensor] | None,
    spec: ModelSpec,
    encoder: Encoder,
    config: Any,
    step: int,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: destination ``*.safetensors``.
        raw: the trained ``EDMPrecond`` (or its state dict).
        ema: its EMA copy (or state dict); ``None`` stores the raw weights under ``ema.`` too.
        spec: how to rebuild the model and task.
        encoder: the fitted/configured intensity encoder.
        config: the resolved run config (``DictConfig`` or dict); file paths are reduced to names.
        step: the optimiser step the weights are from.

    Raises:
        ValueError: a tensor holds NaN or Inf (nothing is written).
    """
    from omegaconf import DictConfig, OmegaConf

    raw_state = _state(raw)
    ema_state = raw_state if ema is None else _state(ema)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, state in (("raw", raw_state), ("ema", ema_state)):
        for name, tensor in state.items():
            t = tensor.detach().to("cpu").contiguous()
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"refusing to save a checkpoint with non-finite values in {prefix}.{name}")
            tensors[f"{prefix}.{name}"] = t.clone()  # clone: no shared storage between the two sets
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medrecon_version": __version__,
        "step": str(int(step)),
        "param_count": str(count_parameters(raw_state)),
        "spec": json.dumps(asdict(spec)),
        "encoder": json.dumps(encoder.to_dict()),
        "config": json.dumps(redact_paths(config or {})),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded metadata of a checkpoint (``spec``, ``encoder`` and ``config`` parsed from JSON).

    Raises:
        UsageError: the file is missing or is not a medrecon checkpoint.
    """
    from medrecon.errors import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise UsageError(f"checkpoint {path} is not a safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path} is not a medrecon checkpoint (format {meta.get('format')!r})")
    out: dict[str, Any] = dict(meta)
    for key in ("spec", "encoder", "config"):
        out[key] = json.loads(meta[key])
    out["step"] = int(meta["step"])
    out["param_count"] = int(meta["param_count"])
    return out


def load_weights(
    path: str | os.PathLike[str], weights: str = "ema", device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """One weight set (``ema`` or ``raw``) of a checkpoint as a state dict for ``EDMPrecond``."""
    if weights not in WEIGHT_SETS:
        raise ValueError(f"weights={weights!r} is not one of {WEIGHT_SETS}")
    prefix = f"{weights}."
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", weights: str = "ema"
) -> LoadedModel:
    """Rebuild the denoiser, task and encoder stored in a checkpoint.

    Args:
        path: a ``*.safetensors`` file written by :func:`save_checkpoint`.
        device: where to put the weights.
        weights: ``"ema"`` (default, for sampling) or ``"raw"``.
    """
    from omegaconf import OmegaConf

    meta = read_metadata(path)
    spec = ModelSpec(**meta["spec"])
    precond = spec.build_precond()
    precond.load_state_dict(load_weights(path, weights), strict=True)
    precond.to(device).eval().requires_grad_(False)
    return LoadedModel(
        precond=precond,
        task=spec.build_task(),
        encoder=Encoder.from_dict(meta["encoder"]),
        config=OmegaConf.create(meta["config"]),
        spatial_dims=spec.spatial_dims,
        context=spec.context,
        spec=spec,
        step=meta["step"],
        weights=weights,
    )
