"""Model checkpoints as data: safetensors weights (raw and EMA) + typed, validated JSON metadata; never a pickle.

A checkpoint file holds two sets of tensors, ``raw.<name>`` (the optimiser's weights) and ``ema.<name>`` (the
exponential moving average used for sampling), named after ``EDMPrecond.state_dict()`` (an autoencoder's
``state_dict()`` for ``objective=autoencoder``). A latent model (``objective=latent``) also holds its frozen
autoencoder once, ``ae.<name>``: one file is the whole model. Its safetensors metadata (a str -> str map) holds:

- ``format`` (``medrecon-checkpoint``), ``format_version``, ``medrecon_version``, ``step``, ``param_count``;
- ``spec``: JSON of :class:`ModelSpec` (model config, task config, spatial dims, channels, 2.5D context,
  ``sigma_data``, training ``objective``) -- enough to rebuild the denoiser and the task without the original
  config files, and to know which estimator the weights are (a diffusion model, a regression baseline, an
  autoencoder, or a latent diffusion model with its autoencoder's config, latent scale and condition mode);
- ``encoder``: JSON of the intensity :class:`~medrecon.data.encoder.Encoder`;
- ``config``: JSON of the resolved run config, with every file path reduced to its final name (so folder
  names, which users sometimes name after patients, never travel with a model). Manifests hold opaque ids
  only, so nothing else in the config can identify a patient;
- ``card`` (optional; checkpoints from before it have none): JSON of :class:`~medrecon.card.TrainingCard`
  (training data summary, best validation score);
- ``distill`` (optional; only a model written by ``medrecon distill``): JSON of
  :class:`~medrecon.diffusion.distill.DistillRecord` (its step count and noise-level grid, the teacher's
  digest): reconstruct and evaluate then sample on that grid.

Loading treats the file as untrusted data (docs/training.md, "Checkpoint validation"). Before any weight is
read: the header length (the file's first 8 bytes) must be at most :data:`MAX_HEADER_BYTES`; the header must be
valid JSON with exactly the known metadata keys; ``spec`` must name a network and a task of medrecon's closed
registries (``medrecon.nn.registry.NETWORKS``, ``medrecon.physics.registry.TASKS``; autoencoders, also the
one inside a latent spec: ``medrecon.nn.registry.AUTOENCODERS``) with options of the declared types and
ranges (``medrecon.schema``); the networks it describes are built on the ``meta`` device (no memory) and must
have at most :data:`MAX_PARAMETERS` parameters together; and the file's tensors must carry exactly those
networks' names and shapes, with float dtypes where they have floats. Every refusal is a
``UsageError`` of one line. Nothing read from a file is imported, called or passed to Hydra.

Files are written atomically (a temporary file beside the destination, then ``os.replace``) and only when
every tensor is finite and the metadata passes the same validation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from medrecon import __version__
from medrecon.card import TrainingCard
from medrecon.data.encoder import Encoder
from medrecon.diffusion.distill import DistillRecord
from medrecon.errors import UsageError
from medrecon.io.atomic import atomic_path
from medrecon.schema import (
    Choice,
    Float,
    Int,
    SchemaError,
    Seq,
    Text,
    check_mapping,
    check_plain,
    quote,
    resolve,
)

FORMAT = "medrecon-checkpoint"
FORMAT_VERSION = "1"
WEIGHT_SETS: tuple[str, ...] = ("ema", "raw")
#: The largest safetensors header (tensor table + metadata) medrecon reads. The bundled demo models' headers
#: are about 28 KiB; ``unet_small``/``unet_base`` (2D or 3D) about 70 KiB.
MAX_HEADER_BYTES = 1 << 20
#: The largest network a checkpoint may describe (4 GB of float32 weights per set); ``unet_base`` has 60M
#: parameters in 2D, 154M in 3D.
MAX_PARAMETERS = 1_000_000_000
METADATA_KEYS = (
    "format",
    "format_version",
    "medrecon_version",
    "step",
    "param_count",
    "spec",
    "encoder",
    "config",
)
OPTIONAL_METADATA_KEYS = ("card", "distill")

_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_DTYPE_NAMES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
#: What the weights were trained to compute (``objective=``): ``diffusion``, the EDM denoiser that samplers
#: integrate; ``regression``, the supervised baseline's one-evaluation map from the condition to the image
#: (``medrecon.diffusion.regression``); ``autoencoder``, the first stage of a latent model (MONAI's
#: AutoencoderKL, ``medrecon.latent``): it reconstructs nothing by itself; ``latent``, an EDM denoiser on the
#: latents of a frozen autoencoder whose weights the same file holds (``ae.*``). Checkpoints written before the
#: field existed are diffusion models.
OBJECTIVES: tuple[str, ...] = ("diffusion", "regression", "autoencoder", "latent")
DIFFUSION_OBJECTIVE = OBJECTIVES[0]
AUTOENCODER_OBJECTIVE = "autoencoder"
LATENT_OBJECTIVE = "latent"
#: The frozen autoencoder's tensors in a latent checkpoint: ``ae.<name of its state dict>`` (one set: it does
#: not train in stage 2, so it has no EMA).
FROZEN_PREFIX = "ae"
#: How a latent model sees its condition (``latent.condition``): ``encode``, the image-space condition through
#: the frozen encoder (``latent_channels`` channels); ``unshuffle``, the condition's voxels rearranged onto the
#: latent grid (space-to-depth: ``factor ** spatial_dims`` channels per image channel, lossless).
LATENT_CONDITIONS: tuple[str, ...] = ("encode", "unshuffle")
_LATENT_FIELDS = {
    "scale": Float(1e-6, 1e6),
    "condition": Choice(LATENT_CONDITIONS),
    # the autoencoder's training patch on the latent grid: its windows over larger volumes (optional)
    "window": Seq(Int(1, 10**5), 2, 3),
}
_SPEC_FIELDS = {
    "spatial_dims": Int(2, 3),
    "image_channels": Int(1, 16),
    "cond_channels": Int(0, 1024),
    "context": Int(0, 32),
    "sigma_data": Float(1e-6, 1e3),
    "objective": Choice(OBJECTIVES),
}


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild a denoiser and its task; checked on construction.

    Attributes:
        model: the ``model`` config node: ``_target_`` (a name in ``medrecon.nn.registry.NETWORKS``) and
            options, no shape facts.
        task: the ``task`` config node: ``_target_`` (a name in ``medrecon.physics.registry.TASKS``) and
            options (``spatial_dims`` included when the task takes it).
        spatial_dims: 2 or 3.
        image_channels: channels of the image (1).
        cond_channels: channels of the network's condition, ``task.cond_channels * (2 * context + 1)``.
        context: 2.5D neighbours on each side (0 for none).
        sigma_data: EDM's data standard deviation.
        objective: :data:`OBJECTIVES`: ``diffusion`` (default, and what a spec without the field means),
            ``regression``, ``autoencoder`` (``model`` names an autoencoder of
            ``medrecon.nn.registry.AUTOENCODERS``; no condition) or ``latent``.
        latent: ``objective=latent`` only (``None`` otherwise): ``{"autoencoder": <AUTOENCODERS config>,
            "scale": s, "condition": "encode"|"unshuffle", "window": [...]}``: the frozen autoencoder, the factor
            its posterior means are multiplied by (``sigma_data / std`` of the training latents: Rombach et al.'s
            unit-variance scaling at EDM's ``sigma_data``), how the condition reaches the latent grid, and
            (optional) the autoencoder's training patch in latent voxels, the window it encodes and decodes
            larger volumes in. ``image_channels`` and ``cond_channels`` then count latent channels.

    Raises:
        SchemaError: (a ``ValueError``) an unknown network or task, an unknown option, or a value of the
            wrong type or range.
    """

    model: dict[str, Any]
    task: dict[str, Any]
    spatial_dims: int
    image_channels: int
    cond_channels: int
    context: int = 0
    sigma_data: float = 0.5
    objective: str = DIFFUSION_OBJECTIVE
    latent: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from medrecon.nn.registry import AUTOENCODERS, NETWORKS
        from medrecon.physics.registry import TASKS

        check_mapping({k: getattr(self, k) for k in _SPEC_FIELDS}, _SPEC_FIELDS, "spec")
        models = AUTOENCODERS if self.objective == AUTOENCODER_OBJECTIVE else NETWORKS
        resolve(models, self.model, "spec.model")
        resolve(TASKS, self.task, "spec.task")
        if (self.latent is not None) != (self.objective == LATENT_OBJECTIVE):
            raise SchemaError(
                f"spec.latent must be given exactly for objective={LATENT_OBJECTIVE} (objective is "
                f"{self.objective}, latent is {'set' if self.latent is not None else 'null'})"
            )
        if self.latent is not None:
            fields = {"autoencoder": _Mapping(), **_LATENT_FIELDS}
            check_mapping(self.latent, fields, "spec.latent", ("autoencoder", "scale", "condition"))
            resolve(AUTOENCODERS, self.latent["autoencoder"], "spec.latent.autoencoder")
            window = self.latent.get("window")
            if window is not None and len(window) != self.spatial_dims:
                raise SchemaError(
                    f"spec.latent.window has {len(window)} sides for spatial_dims={self.spatial_dims}"
                )
        if self.objective in (AUTOENCODER_OBJECTIVE, LATENT_OBJECTIVE) and self.context:
            raise SchemaError(f"spec.context={self.context} does not apply to objective={self.objective}")
        task_dims = self.task.get("spatial_dims", self.spatial_dims)
        if task_dims != self.spatial_dims:
            raise SchemaError(
                f"spec.task.spatial_dims={task_dims} differs from spec.spatial_dims={self.spatial_dims}"
            )
        if self.context and self.spatial_dims != 2:
            raise SchemaError(f"spec.context={self.context} needs spatial_dims=2 (2.5D context)")

    @classmethod
    def from_dict(cls, value: Any) -> ModelSpec:
        """The spec stored in a checkpoint (a JSON object), checked key by key."""
        nested = _Mapping()
        schema = {"model": nested, "task": nested, **_SPEC_FIELDS, "latent": _Mapping(optional=True)}
        checked = check_mapping(
            value, schema, "spec", ("model", "task", "spatial_dims", "image_channels", "cond_channels")
        )
        return cls(**checked)

    def _construct(self) -> nn.Module:
        from medrecon.diffusion.precond import EDMPrecond
        from medrecon.nn.registry import build_autoencoder, build_network

        if self.objective == AUTOENCODER_OBJECTIVE:  # the trained module is the autoencoder itself
            return build_autoencoder(self.model, spatial_dims=self.spatial_dims, channels=self.image_channels)
        net = build_network(
            self.model,
            spatial_dims=self.spatial_dims,
            in_channels=self.image_channels + self.cond_channels,
            out_channels=self.image_channels,
        )
        return EDMPrecond(net, self.image_channels, self.cond_channels, sigma_data=self.sigma_data)

    def expected_state(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of the denoiser's state dict, from a build on the ``meta`` device (no memory,
        no random numbers drawn).

        Raises:
            SchemaError: the network would have more than :data:`MAX_PARAMETERS` parameters.
            ValueError: options the network's constructor refuses together.
        """
        with torch.device("meta"):
            precond = self._construct()
        state = {k: (t.dtype, tuple(t.shape)) for k, t in precond.state_dict().items()}
        count = sum(math.prod(shape) for dtype, shape in state.values() if dtype.is_floating_point)
        count += sum(math.prod(s) for d, s in self.expected_frozen().values() if d.is_floating_point)
        if count > MAX_PARAMETERS:
            raise SchemaError(
                f"spec.model describes a network of {count:,} parameters, more than the {MAX_PARAMETERS:,} "
                "medrecon builds"
            )
        return state

    def build_precond(self) -> nn.Module:
        """A freshly initialised ``EDMPrecond`` around the network ``model`` names (size-checked first); for
        ``objective=autoencoder`` the autoencoder itself."""
        self.expected_state()
        return self._construct()

    def _construct_frozen(self) -> nn.Module | None:
        from medrecon.nn.registry import build_autoencoder

        if self.latent is None:
            return None
        channels = int(self.build_task().image_channels)
        return build_autoencoder(
            self.latent["autoencoder"],
            spatial_dims=self.spatial_dims,
            channels=channels,
            where="spec.latent.autoencoder",
        )

    def expected_frozen(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of the frozen autoencoder's state dict of a latent spec (built on the
        ``meta`` device), ``{}`` for other objectives. The file stores it as ``ae.<name>``."""
        if self.latent is None:
            return {}
        with torch.device("meta"):
            autoencoder = self._construct_frozen()
        return {k: (t.dtype, tuple(t.shape)) for k, t in autoencoder.state_dict().items()}

    def build_frozen(self) -> nn.Module | None:
        """A freshly initialised autoencoder of a latent spec (``None`` for other objectives); size-checked
        first with the denoiser (:meth:`expected_state`)."""
        self.expected_state()
        return self._construct_frozen()

    def expected_channels(self, task: Any) -> tuple[int, int]:
        """``(image_channels, cond_channels)`` the spec must have for ``task`` (its own task, built):

        - diffusion, regression: the task's image channels and ``task.cond_channels * (2 * context + 1)``;
        - autoencoder: the task's image channels (in and out) and no condition;
        - latent: the autoencoder's ``latent_channels``, and for the condition ``latent_channels``
          (``encode``; the task's condition must have the image's channels) or
          ``task.cond_channels * factor ** spatial_dims`` (``unshuffle``).

        Raises:
            SchemaError: ``encode`` for a task whose condition has other channels than its image.
        """
        from medrecon.nn.registry import autoencoder_factor

        image, cond = int(task.image_channels), int(task.cond_channels)
        if self.objective == AUTOENCODER_OBJECTIVE:
            return image, 0
        if self.objective != LATENT_OBJECTIVE:
            return image, cond * (2 * self.context + 1)
        with torch.device("meta"):
            latent_channels = int(self._construct_frozen().latent_channels)
        if self.latent["condition"] == "unshuffle":
            return latent_channels, cond * autoencoder_factor(self.latent["autoencoder"]) ** self.spatial_dims
        if cond != image:
            raise SchemaError(
                f"latent.condition=encode needs a condition with the image's {image} channel(s); task "
                f"{getattr(task, 'name', '?')} has {cond}: use latent.condition=unshuffle"
            )
        return latent_channels, latent_channels

    def build_task(self) -> Any:
        """The task ``task`` names, built through the closed registry ``medrecon.physics.registry.TASKS``."""
        from medrecon.physics.registry import build_task

        return build_task(self.task)


@dataclass(frozen=True)
class _Mapping:
    """A nested mapping whose keys are checked later (``ModelSpec.__post_init__``); ``None`` too when
    ``optional``."""

    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        if isinstance(value, Mapping) or (value is None and self.optional):
            return value
        raise SchemaError(f"{where} must be a mapping, got {quote(value)}")


@dataclass
class LoadedModel:
    """A checkpoint ready to sample with.

    Attributes:
        precond: ``EDMPrecond`` on the chosen weights, in eval mode, gradients off (the autoencoder itself for
            ``objective=autoencoder``).
        task: the task the model was trained for.
        encoder: the intensity encoder (scanner units <-> [-1, 1]).
        config: the stored run config (``DictConfig``; file paths reduced to names).
        spatial_dims: 2 or 3.
        context: 2.5D neighbours per side (see ``medrecon.data.context``).
        spec: the full model spec.
        step: the training step the weights are from.
        weights: ``"ema"`` or ``"raw"``.
        card: the training card (data summary, best validation), ``None`` when not recorded.
        codec: ``objective=latent``: the frozen autoencoder with its scale and condition mode
            (``medrecon.latent.codec.LatentCodec``, eval mode, gradients off); ``None`` otherwise.
        distill: the distillation record of a model from ``medrecon distill`` (also set as
            ``precond.distilled``, which the reconstruction method reads), else ``None``.
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
    card: TrainingCard | None = None
    codec: Any = None
    distill: DistillRecord | None = None


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
    card: TrainingCard | None = None,
    frozen: nn.Module | dict[str, torch.Tensor] | None = None,
    distill: DistillRecord | None = None,
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
        card: what training knows about the data and validation (``medrecon.card``), or ``None``.
        frozen: a latent model's frozen autoencoder (or its state dict), stored once as ``ae.<name>``.
        distill: the record of a distilled model (``medrecon distill``), or ``None``.

    Raises:
        ValueError: a tensor holds NaN or Inf, or the metadata would not pass :func:`read_metadata`'s checks
            (nothing is written).
    """
    from omegaconf import DictConfig, OmegaConf

    raw_state = _state(raw)
    ema_state = raw_state if ema is None else _state(ema)
    tensors: dict[str, torch.Tensor] = {}
    sets = [("raw", raw_state), ("ema", ema_state)]
    if frozen is not None:
        sets.append((FROZEN_PREFIX, _state(frozen)))
    for prefix, state in sets:
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
    if card is not None:
        metadata["card"] = json.dumps(card.to_dict())
    if distill is not None:
        metadata["distill"] = json.dumps(distill.to_dict())
    _check_metadata(metadata)  # what is written must load
    table = sum(len(name) + 80 for name in tensors)  # safetensors' per-tensor JSON entry, generously
    if table + len(json.dumps(metadata)) > MAX_HEADER_BYTES:
        raise ValueError(f"checkpoint metadata is larger than the {MAX_HEADER_BYTES} bytes loading accepts")
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class TensorInfo:
    """One entry of a safetensors header: dtype name (``F32``, ...), shape, byte range after the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checkpoint's safetensors header, read without touching the tensor data."""

    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    data_start: int  # file offset of the first tensor byte


def read_header(path: str | os.PathLike[str]) -> Header:
    """The safetensors header of ``path``, refused before parsing when longer than :data:`MAX_HEADER_BYTES`.

    Raises:
        UsageError: the file is missing, too short, not safetensors, or has an oversized or malformed header.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > size - 8:
            raise UsageError(f"checkpoint {path} is not a safetensors file (no valid header length)")
        if length > MAX_HEADER_BYTES:
            raise UsageError(
                f"checkpoint {path}: its header has {length} bytes, more than the {MAX_HEADER_BYTES} "
                "medrecon reads (MAX_HEADER_BYTES)"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise UsageError(
            f"checkpoint {path} is not a safetensors file (its header is not valid JSON)"
        ) from err
    try:
        return _parse_header(header, size - 8 - length, 8 + length)
    except SchemaError as err:
        raise UsageError(f"checkpoint {path} is not a safetensors file ({err})") from err


def _parse_header(header: Any, data_size: int, data_start: int) -> Header:
    if not isinstance(header, dict):
        raise SchemaError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SchemaError("__metadata__ is not a map of strings to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SchemaError(f"tensor entry {quote(name)} is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        ok = (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and len(shape) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        )
        if not ok:
            raise SchemaError(f"tensor entry {quote(name)} is malformed")
        tensors[name] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    return Header(metadata, tensors, data_start)


def _json(metadata: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as err:
        raise SchemaError(f"metadata field {key!r} is not valid JSON") from err


def _digits(metadata: Mapping[str, str], key: str, max_digits: int) -> int:
    value = metadata[key]
    if not (value.isascii() and value.isdigit() and len(value) <= max_digits):
        raise SchemaError(f"metadata field {key}={quote(value)} is not a whole number")
    return int(value)


@dataclass(frozen=True)
class CheckpointMetadata:
    """A checkpoint's metadata, parsed and checked (the typed form of what :func:`save_checkpoint` writes)."""

    format_version: str
    medrecon_version: str
    step: int
    param_count: int
    spec: ModelSpec
    encoder: Encoder
    config: dict[str, Any]
    card: TrainingCard | None
    distill: DistillRecord | None = None


def _check_metadata(metadata: Mapping[str, str]) -> CheckpointMetadata:
    """The typed metadata; SchemaError (one line) for anything that does not fit."""
    if metadata.get("format") != FORMAT:
        raise SchemaError(f"not a medrecon checkpoint (format {quote(metadata.get('format'))})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise SchemaError(
            f"checkpoint format version {quote(metadata.get('format_version'))}; this medrecon reads "
            f"version {FORMAT_VERSION}"
        )
    unknown = [k for k in metadata if k not in METADATA_KEYS + OPTIONAL_METADATA_KEYS]
    if unknown:
        raise SchemaError(f"unknown metadata key(s) {', '.join(quote(k) for k in unknown[:5])}")
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise SchemaError(f"metadata lacks {', '.join(missing)}")
    config = _json(metadata, "config")
    if not isinstance(config, dict):
        raise SchemaError("metadata field 'config' is not a JSON object")
    card = _json(metadata, "card") if "card" in metadata else None
    distill = _json(metadata, "distill") if "distill" in metadata else None
    return CheckpointMetadata(
        format_version=metadata["format_version"],
        medrecon_version=Text(max_len=32).check(metadata["medrecon_version"], "medrecon_version"),
        step=_digits(metadata, "step", 12),
        param_count=_digits(metadata, "param_count", 13),
        spec=ModelSpec.from_dict(_json(metadata, "spec")),
        encoder=Encoder.from_dict(_json(metadata, "encoder")),
        config=check_plain(config, "config"),
        card=None if card is None else TrainingCard.from_dict(card),
        distill=None if distill is None else DistillRecord.from_dict(distill),
    )


def _one_line(err: BaseException, limit: int = 300) -> str:
    """The error's message on one line, at most ``limit`` characters (messages may quote a file's keys)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checked(path: str | os.PathLike[str], header: Header) -> CheckpointMetadata:
    try:
        return _check_metadata(header.metadata)
    except (ValueError, TypeError) as err:  # SchemaError, and what a constructor refuses
        raise UsageError(f"checkpoint {path}: {_one_line(err)}") from err


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded, checked metadata of a checkpoint (``spec``, ``encoder``, ``config`` as plain dicts,
    ``card`` as a :class:`~medrecon.card.TrainingCard` or ``None``, ``distill`` as a
    :class:`~medrecon.diffusion.distill.DistillRecord` or ``None``), without reading any tensor.

    Raises:
        UsageError: the file is missing, is not a medrecon checkpoint, or its metadata does not pass the checks.
    """
    header = read_header(path)
    meta = _checked(path, header)
    return {
        **header.metadata,
        "step": meta.step,
        "param_count": meta.param_count,
        "spec": asdict(meta.spec),
        "encoder": meta.encoder.to_dict(),
        "config": meta.config,
        "card": meta.card,
        "distill": meta.distill,
    }


def check_tensors(
    tensors: Mapping[str, TensorInfo],
    expected: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    frozen: Mapping[str, tuple[torch.dtype, tuple[int, ...]]] | None = None,
) -> None:
    """Refuse a tensor table that differs from both weight sets of the expected state dict (and, for a latent
    model, from its frozen autoencoder's state dict under ``ae.``).

    Every ``raw.<name>`` and ``ema.<name>`` (and ``ae.<name>`` of ``frozen``) must be present with the expected
    shape and a float dtype where the network has a float (half precision is converted on load), the exact
    dtype elsewhere; nothing else may be present.

    Raises:
        SchemaError: the first difference, in one line.
    """
    want = {f"{s}.{name}": value for s in WEIGHT_SETS for name, value in expected.items()}
    want.update({f"{FROZEN_PREFIX}.{name}": value for name, value in (frozen or {}).items()})
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise SchemaError(f"lacks {len(missing)} tensor(s) the network has, e.g. {quote(missing[0])}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise SchemaError(f"has {len(extra)} tensor(s) the network does not have, e.g. {quote(extra[0])}")
    for name, (dtype, shape) in want.items():
        info = tensors[name]
        if info.shape != shape:
            raise SchemaError(
                f"tensor {name} has shape {list(info.shape)}, the network expects {list(shape)}"
            )
        allowed = _FLOAT_DTYPES if dtype.is_floating_point else (_DTYPE_NAMES.get(dtype, str(dtype)),)
        if info.dtype not in allowed:
            raise SchemaError(
                f"tensor {name} has dtype {quote(info.dtype)}, the network expects {' or '.join(allowed)}"
            )


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint whose header, metadata and tensor table passed every check (no tensor read yet)."""

    path: Path
    header: Header
    meta: CheckpointMetadata
    parameters: int  # the network's parameter count


def check_checkpoint(path: str | os.PathLike[str]) -> CheckedCheckpoint:
    """Every check of the module docstring, in order, reading the header only.

    Raises:
        UsageError: the first check that fails, in one line.
    """
    header = read_header(path)
    meta = _checked(path, header)
    try:
        task = meta.spec.build_task()
        expected_image, expected_cond = meta.spec.expected_channels(task)
        if meta.spec.image_channels != expected_image or meta.spec.cond_channels != expected_cond:
            raise SchemaError(
                f"spec channels (image {meta.spec.image_channels}, condition {meta.spec.cond_channels}) do not "
                f"fit the task and objective {meta.spec.objective} (image {expected_image}, condition "
                f"{expected_cond})"
            )
        expected = meta.spec.expected_state()
        check_tensors(header.tensors, expected, meta.spec.expected_frozen())
        parameters = sum(math.prod(s) for d, s in expected.values() if d.is_floating_point)
        if meta.param_count != parameters:
            raise SchemaError(f"param_count {meta.param_count} differs from the network's {parameters}")
    except (ValueError, TypeError) as err:  # SchemaError, and what a constructor refuses
        raise UsageError(f"checkpoint {path}: {_one_line(err)}") from err
    try:
        with safe_open(str(path), framework="pt"):  # safetensors' own checks of the byte layout
            pass
    except Exception as err:  # safetensors raises its own error types for a broken layout
        raise UsageError(f"checkpoint {path} is not a valid safetensors file ({_one_line(err)})") from err
    return CheckedCheckpoint(Path(path), header, meta, parameters)


def _read_set(path: str | os.PathLike[str], weights: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    prefix = f"{weights}."
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _weight_set(weights: str) -> str:
    if weights not in WEIGHT_SETS:
        raise UsageError(f"weights={weights!r} is not one of {', '.join(WEIGHT_SETS)}")
    return weights


def load_weights(
    path: str | os.PathLike[str], weights: str = "ema", device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """One weight set (``ema`` or ``raw``) of a checked checkpoint as a state dict for ``EDMPrecond``.

    Raises:
        UsageError: an unknown weight set, or a checkpoint that fails :func:`check_checkpoint`.
    """
    _weight_set(weights)
    check_checkpoint(path)
    return _read_set(path, weights, device)


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", weights: str = "ema"
) -> LoadedModel:
    """Rebuild the denoiser, task and encoder stored in a checkpoint, after :func:`check_checkpoint`.

    Args:
        path: a ``*.safetensors`` file written by :func:`save_checkpoint`.
        device: where to put the weights.
        weights: ``"ema"`` (default, for sampling) or ``"raw"``.

    Raises:
        UsageError: the file fails a check (one line; nothing of the weights has been read then).
    """
    from omegaconf import OmegaConf

    _weight_set(weights)
    checked = check_checkpoint(path)
    meta = checked.meta
    precond = meta.spec.build_precond()
    precond.load_state_dict(_read_set(path, weights), strict=True)
    precond.to(device).eval().requires_grad_(False)
    precond.distilled = meta.distill  # a distilled denoiser is valid on its grid only (recon.methods)
    codec = None
    if meta.spec.latent is not None:
        from medrecon.latent.codec import LatentCodec

        autoencoder = meta.spec.build_frozen()
        autoencoder.load_state_dict(_read_set(path, FROZEN_PREFIX), strict=True)
        codec = LatentCodec.from_spec(autoencoder.to(device), meta.spec.latent)
    return LoadedModel(
        precond=precond,
        task=meta.spec.build_task(),
        encoder=meta.encoder,
        config=OmegaConf.create(meta.config),
        spatial_dims=meta.spec.spatial_dims,
        context=meta.spec.context,
        spec=meta.spec,
        step=meta.step,
        weights=weights,
        card=meta.card,
        codec=codec,
        distill=meta.distill,
    )


def checkpoint_digest(path: str | os.PathLike[str], weights: str = "ema") -> str:
    """The sha256 (hex) of what one weight set of a checkpoint computes: its ``spec`` and ``encoder``
    (canonical JSON) and the set's tensors (names, dtypes, shapes and bytes, in name order).

    The same weights give the same digest in any file (the step, the stored config and the other weight set
    do not enter); other weights of the same size give another. A diffusion model's spec enters without its
    ``objective`` and any spec without ``latent`` (the fields are newer than the digest), so a file keeps the
    digest it had before. A latent model's frozen autoencoder (``ae.*``) enters after the weight set: other
    autoencoder weights give another digest. Reads the file once, in 1 MiB chunks.

    Raises:
        UsageError: the file fails the header and metadata checks, or ``weights`` is not a weight set.
    """
    _weight_set(weights)
    header = read_header(path)
    meta = _checked(path, header)
    digest = hashlib.sha256()
    spec = asdict(meta.spec)
    if spec["objective"] == DIFFUSION_OBJECTIVE:  # the field is newer than the digest: same file, same digest
        del spec["objective"]
    if spec["latent"] is None:  # likewise
        del spec["latent"]
    described = {"spec": spec, "encoder": meta.encoder.to_dict()}
    digest.update(json.dumps(described, sort_keys=True).encode())
    prefix, frozen = f"{weights}.", f"{FROZEN_PREFIX}."
    names = [(k, k[len(prefix) :]) for k in sorted(header.tensors) if k.startswith(prefix)]
    names += [(k, k) for k in sorted(header.tensors) if k.startswith(frozen)]  # full names: never a set's
    with open(path, "rb") as f:
        for name, shown in names:
            info = header.tensors[name]
            digest.update(json.dumps([shown, info.dtype, list(info.shape)]).encode())
            f.seek(header.data_start + info.begin)
            remaining = info.end - info.begin
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise UsageError(f"checkpoint {path} is truncated")
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_PARAMETERS",
    "AUTOENCODER_OBJECTIVE",
    "FROZEN_PREFIX",
    "LATENT_CONDITIONS",
    "LATENT_OBJECTIVE",
    "OBJECTIVES",
    "WEIGHT_SETS",
    "CheckedCheckpoint",
    "CheckpointMetadata",
    "LoadedModel",
    "ModelSpec",
    "check_checkpoint",
    "checkpoint_digest",
    "count_parameters",
    "load_checkpoint",
    "load_weights",
    "read_header",
    "read_metadata",
    "redact_paths",
    "save_checkpoint",
]
