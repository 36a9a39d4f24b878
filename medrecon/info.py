"""``medrecon info checkpoint=FILE [format=text|json]``: what a checkpoint is, read from its header alone.

The model card (:func:`model_card`) says which task the model solves and with which options, what the
weights compute (the training ``objective``: a diffusion model sampled by reconstruct, or the supervised
regression baseline evaluated once), which network (class, options, parameter count), its geometry (2D/3D,
2.5D context), how long it trained, on what data (volume and item counts, modalities, shape and voxel-spacing
ranges: the resolution it was trained at), its best validation score, its intensity encoding, and the digest
of each weight set (the identity ``medrecon reconstruct`` uses to decide whether finished items are still
valid). Checkpoints written before the training card existed say "not recorded" for the data and validation.
The file passes every loading check (``medrecon.checkpoint.check_checkpoint``) first; no weight is loaded into
a network, and the card holds no ids or paths (the file is named by its final name only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medrecon.card import SPACING_TOLERANCE
from medrecon.errors import UsageError

FORMATS = ("text", "json")
NOT_RECORDED = "not recorded"
OBJECTIVE_TEXT = {
    "diffusion": "diffusion (conditional EDM denoiser: reconstruct samples it with sampler= and guidance=)",
    "regression": "regression (supervised baseline: one network evaluation from the condition to the image)",
    "autoencoder": "autoencoder (stage 1 of a latent model: train one on it with objective=latent "
    "autoencoder=FILE; it reconstructs nothing by itself)",
    "latent": "latent (conditional EDM denoiser on the latents of its frozen autoencoder, held in the same file: "
    "reconstruct samples it with sampler= and guidance= acting on decoded images)",
}


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is (``medrecon info``).

    Attributes:
        file: the checkpoint's file name (no folders).
        format_version, medrecon_version: the checkpoint format and the medrecon that wrote it.
        step: optimiser steps the weights are from; ``planned_steps``: ``train.steps`` of the run (or None).
        task, task_name, task_options: the task's registry name, config name (``sr4x``) and options.
        objective: ``diffusion`` or ``regression`` (``medrecon.checkpoint.OBJECTIVES``; checkpoints from before
            the field are ``diffusion``).
        network, network_options, parameters: the network's registry name, options and parameter count.
        spatial_dims, image_channels, cond_channels, context, sigma_data: the denoiser's geometry.
        training: a few run options from the stored config (batch size, patch size, slice axis), when stored.
        data: the training data summary (``medrecon.card.DataSummary`` as a dict), or None: not recorded.
        validation: the best validation (PSNR dB, SSIM, step), or None: not recorded.
        encoder: the intensity encoder's options.
        digests: sha256 per weight set (``ema``, ``raw``), as ``medrecon.checkpoint.checkpoint_digest``.
        plane_spacing: ``[low, high]`` in-plane spacing (mm) the network saw in training, scale augmentation
            included (``medrecon.card.training_plane_spacing``), or None: not recorded.
        spacing_band: ``[low, high]`` mm outside which reconstruct and evaluate flag an input (the training
            range widened by ``medrecon.card.SPACING_TOLERANCE``), or None.
        latent: a latent model's frozen autoencoder: ``network``, ``options``, ``factor`` (image voxels per
            latent voxel and axis), ``scale``, ``condition`` and ``validation`` (its own best held-out
            reconstruction score, the ceiling of the latent model; None: not recorded); None for other models.
        distilled: a distilled model's record (``medrecon distill``: ``steps``, ``sigmas``, ``teacher_steps``,
            ``teacher`` digest, ``sampler``, ``method``); None for other models.
    """

    file: str
    format_version: str
    medrecon_version: str
    step: int
    planned_steps: int | None
    task: str
    task_name: str
    task_options: dict[str, Any]
    objective: str
    network: str
    network_options: dict[str, Any]
    parameters: int
    spatial_dims: int
    image_channels: int
    cond_channels: int
    context: int
    sigma_data: float
    training: dict[str, Any]
    data: dict[str, Any] | None
    validation: dict[str, Any] | None
    encoder: dict[str, Any]
    digests: dict[str, str]
    plane_spacing: list[float] | None = None
    spacing_band: list[float] | None = None
    latent: dict[str, Any] | None = None
    distilled: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``format=json``)."""
        return asdict(self)


def _stored(config: dict[str, Any], dotted: str) -> Any:
    """A scalar of the stored run config (None when absent or not a scalar)."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, (int, float, str)) else None


def model_card(path: str | Path) -> ModelCard:
    """The model card of a checkpoint (header and metadata only; every loading check applies).

    Raises:
        UsageError: the file is missing or fails a check (one line).
    """
    from medrecon.card import training_plane_spacing
    from medrecon.checkpoint import WEIGHT_SETS, check_checkpoint, checkpoint_digest

    checked = check_checkpoint(path)
    meta, spec = checked.meta, checked.meta.spec
    task = spec.build_task()
    card = meta.card
    config = meta.config
    plane = training_plane_spacing(card, config, spec.spatial_dims)
    planned = _stored(config, "train.steps")
    training = {
        "batch_size": _stored(config, "train.batch_size"),
        "patch_size": _stored(config, "data.patch_size"),
        "axis": _stored(config, "data.axis"),
    }
    return ModelCard(
        file=Path(path).name,
        format_version=meta.format_version,
        medrecon_version=meta.medrecon_version,
        step=meta.step,
        planned_steps=planned if isinstance(planned, int) and not isinstance(planned, bool) else None,
        task=str(spec.task["_target_"]),
        task_name=str(getattr(task, "name", "")),
        task_options={k: v for k, v in spec.task.items() if k != "_target_"},
        objective=spec.objective,
        network=str(spec.model["_target_"]),
        network_options={k: v for k, v in spec.model.items() if k != "_target_"},
        parameters=checked.parameters,
        spatial_dims=spec.spatial_dims,
        image_channels=spec.image_channels,
        cond_channels=spec.cond_channels,
        context=spec.context,
        sigma_data=spec.sigma_data,
        training={k: v for k, v in training.items() if v is not None},
        data=None if card is None or card.data is None else asdict(card.data),
        validation=None if card is None or card.validation is None else asdict(card.validation),
        encoder=meta.encoder.to_dict(),
        digests={w: checkpoint_digest(path, w) for w in WEIGHT_SETS},
        plane_spacing=None if plane is None else [float(v) for v in plane],
        spacing_band=None if plane is None else [plane[0] / SPACING_TOLERANCE, plane[1] * SPACING_TOLERANCE],
        latent=_latent(spec, card),
        distilled=None if meta.distill is None else meta.distill.to_dict(),
    )


def _latent(spec: Any, card: Any) -> dict[str, Any] | None:
    from medrecon.nn.registry import autoencoder_factor

    if spec.latent is None:
        return None
    ae = spec.latent["autoencoder"]
    score = None if card is None or card.autoencoder is None else asdict(card.autoencoder)
    return {
        "network": str(ae["_target_"]),
        "options": {k: v for k, v in ae.items() if k != "_target_"},
        "factor": autoencoder_factor(ae),
        "scale": spec.latent["scale"],
        "condition": spec.latent["condition"],
        "validation": score,
    }


def _score(val: dict[str, Any] | None, what: str = "best") -> str:
    if val is None:
        return NOT_RECORDED
    return f"{what} PSNR {val['psnr']:.2f} dB, SSIM {val['ssim']:.4f} (step {val['step']})"


def _options(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in options.items()) or "defaults"


def _axes(values: Any, sep: str = " x ") -> str:
    return sep.join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _data_lines(data: dict[str, Any] | None) -> list[tuple[str, str]]:
    if data is None:
        return [("training data", NOT_RECORDED), ("spacing", NOT_RECORDED)]
    modalities = ", ".join(f"{k} {v}" for k, v in data["modalities"].items()) or "none"
    text = (
        f"{data['volumes']} volume(s) ({modalities}), {data['items']} training item(s), "
        f"{data['val_items']} validation item(s), patch {_axes(data['patch'], 'x')}"
    )
    if data["shape_min"] is not None:
        text += f"; shapes {_axes(data['shape_min'], 'x')} .. {_axes(data['shape_max'], 'x')} voxels"
    spacing = NOT_RECORDED
    if data["spacing_median"] is not None:
        ranges = " x ".join(f"{lo:g}-{hi:g}" for lo, hi in zip(data["spacing_min"], data["spacing_max"]))
        spacing = f"median {_axes(data['spacing_median'])} mm (range {ranges} mm)"
    return [("training data", text), ("spacing", spacing)]


def _plane_line(plane: list[float] | None, band: list[float] | None) -> str:
    if plane is None or band is None:
        return f"{NOT_RECORDED} (reconstruct and evaluate do not check input spacing)"
    return (
        f"{plane[0]:.4g}-{plane[1]:.4g} mm seen in training (scale augmentation included); reconstruct and "
        f"evaluate flag inputs outside {band[0]:.4g}-{band[1]:.4g} mm on the output grid (spacing_tolerance="
        f"{SPACING_TOLERANCE:g}, the default)"
    )


def render(card: ModelCard) -> str:
    """The card as aligned ``label  value`` lines (``format=text``)."""
    enc = card.encoder
    if enc["kind"] == "window":
        encoding = f"window [{enc['low']:g}, {enc['high']:g}] -> [-1, 1]"
    else:
        encoding = f"percentile {enc['low_pct']:g}-{enc['high_pct']:g} -> [-1, 1], fit {enc['fit']}"
    encoding += ", clipped" if enc["clip"] else ""
    steps = f"{card.step}" + (f" of {card.planned_steps}" if card.planned_steps is not None else "")
    run = ", ".join(f"{k} {v}" for k, v in card.training.items())
    val = card.validation
    rows = [
        ("checkpoint", card.file),
        (
            "format",
            f"medrecon-checkpoint v{card.format_version}, written by medrecon {card.medrecon_version}",
        ),
        ("task", f"{card.task_name} ({card.task}): {_options(card.task_options)}"),
        ("objective", OBJECTIVE_TEXT.get(card.objective, card.objective)),
        ("network", f"{card.network}, {card.parameters:,} parameters: {_options(card.network_options)}"),
        (
            "geometry",
            f"{card.spatial_dims}D, 2.5D context {card.context}, image channels {card.image_channels}, "
            f"condition channels {card.cond_channels}, sigma_data {card.sigma_data:g}",
        ),
        ("training", f"step {steps}" + (f"; {run}" if run else "")),
        *_data_lines(card.data),
        ("plane spacing", _plane_line(card.plane_spacing, card.spacing_band)),
        (
            "validation",
            _score(val, "best held-out reconstruction" if card.objective == "autoencoder" else "best"),
        ),
        *_latent_rows(card.latent),
        *_distill_rows(card.distilled),
        ("encoder", encoding),
        *((f"digest {w}", d) for w, d in card.digests.items()),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _distill_rows(record: dict[str, Any] | None) -> list[tuple[str, str]]:
    if record is None:
        return []
    grid = ", ".join(f"{s:.4g}" for s in record["sigmas"])
    text = (
        f"{record['method']} distillation of a {record['teacher_steps']}-step {record['sampler']} teacher "
        f"(ema digest {record['teacher'][:16]}...): {record['steps']} network evaluation(s) per sample on "
        f"its grid [{grid}], which reconstruct and evaluate use"
    )
    return [("distilled", text)]


def _latent_rows(latent: dict[str, Any] | None) -> list[tuple[str, str]]:
    if latent is None:
        return []
    text = (
        f"{latent['network']} ({_options(latent['options'])}): {latent['factor']}x per axis, scale "
        f"{latent['scale']:.6g}, condition {latent['condition']}"
    )
    return [("autoencoder", text), ("ceiling", _score(latent["validation"], "its held-out reconstruction"))]


def run(cfg: Any) -> int:
    """Print the model card of ``cfg.checkpoint`` as text or JSON (``cfg.format``); returns 0."""
    fmt = str(cfg.get("format", "text"))
    if fmt not in FORMATS:
        raise UsageError(f"format={fmt!r} is not one of {', '.join(FORMATS)}")
    card = model_card(str(cfg.checkpoint))
    print(json.dumps(card.to_dict(), indent=2) if fmt == "json" else render(card), flush=True)
    return 0
