"""Turn ``cfg.data`` + a manifest into the training and validation datasets (the ``data`` config group)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from medrecon.card import DataSummary, plane_axes, summarize_data
from medrecon.data.datasets import (
    Augment,
    Foreground,
    PatchDataset,
    SliceDataset,
    evaluation_subset,
    slice_index,
)
from medrecon.data.encoder import Encoder, build_encoder
from medrecon.data.regions import SliceSplit, build_slice_split, split_regions, unit_problem
from medrecon.data.source import VolumeCache, load_array, read_records, select_records
from medrecon.data.transforms import patch_shape

log = logging.getLogger(__name__)

AXES: dict[Any, tuple[int, ...]] = {0: (0,), 1: (1,), 2: (2,), "all": (0, 1, 2)}


@dataclass
class TrainingData:
    """Everything the loop needs from the data layer.

    Attributes:
        train: training dataset; keys ``(item, seed)`` -> ``(C, *patch)`` tensors.
        weights: sampling weights of the training items (None = uniform).
        val: validation dataset (int keys, centred, no augmentation) or None when the split is empty.
        val_keys: the few validation items used during training.
        encoder: the intensity encoder (saved in the checkpoint).
        modality: the training records' modality (``MR``, ``CT``, ...).
        spatial_dims, context, patch: sample geometry.
        num_volumes: training volumes.
        summary: counts, modalities, shape and spacing ranges of the training data (stored in checkpoints'
            ``card``; no ids or paths).
    """

    train: Dataset
    weights: np.ndarray | None
    val: Dataset | None
    val_keys: list[int]
    encoder: Encoder
    modality: str
    spatial_dims: int
    context: int
    patch: tuple[int, ...]
    num_volumes: int
    summary: DataSummary | None = None


def _shape(record: Any) -> tuple[int, int, int]:
    shape = getattr(record, "shape", None)
    if shape is not None and len(shape) == 3:
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return tuple(load_array(record).shape)  # type: ignore[return-value]


def _modality(records: Sequence[Any]) -> str:
    counts = Counter(str(getattr(r, "modality", None) or "unknown").upper() for r in records)
    modality, _ = counts.most_common(1)[0]
    if len(counts) > 1:
        log.warning(
            "training records mix modalities %s; the encoder is chosen for %s", dict(counts), modality
        )
    return modality


def _thick_enough(
    records: list[Any],
    spatial_dims: int,
    axes: tuple[int, ...],
    slice_split: SliceSplit | None,
    role: str,
) -> list[Any]:
    """The records that give units; the others are left out with a warning (``too_few_slices``).

    A single slice ``(I, J, 1)`` trains a 2D model across axis 2, but gives nothing to a 3D model, to slices
    across axis 0 or 1 (``medrecon.data.regions.unit_problem``) or to a slice split (no slabs to hold out).

    Raises:
        ValueError: no training record is left (validation may end up empty).
    """
    kept, problems = [], []
    for record in records:
        shape = _shape(record)
        found = [unit_problem(shape, spatial_dims, a) for a in axes]
        problem = None if any(p is None for p in found) else found[0]
        if problem is None and slice_split is not None:
            try:
                slice_split.bounds(int(shape[slice_split.axis]))
            except ValueError as err:
                problem = str(err)
        if problem is None:
            kept.append(record)
        else:
            problems.append(problem)
    if problems:
        log.warning("%d %s record(s) left out (too_few_slices), e.g. %s", len(problems), role, problems[0])
        if not kept and role == "training":
            raise ValueError(f"no training record has enough slices: {problems[0]}")
    return kept


def build_training_data(data_cfg: Any, manifest: str | Path, scale: Sequence[int] = ()) -> TrainingData:
    """Read the manifest and build the datasets described by ``data_cfg`` (``cfg.data``).

    Args:
        data_cfg: the ``data`` config node.
        manifest: path of the JSONL manifest.
        scale: the task's per-axis scale factor (patch sides must be divisible by it).

    Raises:
        UsageError: empty/invalid manifest, no ok records in the chosen split.
        ValueError: invalid data options (names the option and the allowed values).
    """
    spatial_dims = int(data_cfg.get("spatial_dims", 2))
    if spatial_dims not in (2, 3):
        raise ValueError(f"data.spatial_dims must be 2 or 3, got {spatial_dims!r}")
    context = int(data_cfg.get("context", 0) or 0)
    if context < 0 or (context and spatial_dims != 2):
        raise ValueError(f"data.context={context} needs spatial_dims=2 and a value >= 0 (0 turns it off)")
    axis_opt = data_cfg.get("axis", 2)
    axis_key = axis_opt if axis_opt == "all" else int(axis_opt)
    if axis_key not in AXES:
        raise ValueError(f"data.axis={axis_opt!r} is not one of 0, 1, 2, all")
    patch = patch_shape(data_cfg.get("patch_size", 64), spatial_dims, scale)
    slice_split = build_slice_split(data_cfg.get("slice_split"))
    fg_cfg = data_cfg.get("foreground")
    foreground = Foreground(**dict(fg_cfg)) if fg_cfg else None
    augment_cfg = data_cfg.get("augment")
    augment = Augment(**dict(augment_cfg)) if augment_cfg else None
    capacity = int(data_cfg.get("cache_volumes", 8))

    records = read_records(manifest)
    if slice_split is None:
        train_records = select_records(records, data_cfg.get("train_split", "train"), manifest=manifest)
        train_records = _thick_enough(train_records, spatial_dims, AXES[axis_key], None, "training")
        val_name = data_cfg.get("val_split", "val")
        val_records = [r for r in records if r.status == "ok" and r.split == val_name] if val_name else []
        val_records = _thick_enough(val_records, spatial_dims, AXES[axis_key], None, "validation")
        train_regions = split_regions([_shape(r) for r in train_records], "train", None)
        val_regions = split_regions([_shape(r) for r in val_records], "val", None)
    else:  # slabs of every ok record
        train_records = select_records(records, None, manifest=manifest)
        train_records = val_records = _thick_enough(
            train_records, spatial_dims, AXES[axis_key], slice_split, "training"
        )
        shapes = [_shape(r) for r in train_records]
        train_regions = split_regions(shapes, "train", slice_split)
        val_regions = split_regions(shapes, "val", slice_split)

    modality = _modality(train_records)
    encoder = build_encoder(data_cfg.get("encoder"), modality)
    if encoder.fit == "global" and not encoder.fitted:
        encoder = encoder.fit_global(r.view(load_array(train_records[r.volume])) for r in train_regions)
        log.info("global intensity encoder: [%g, %g] -> [-1, 1]", encoder.low, encoder.high)

    train_cache = VolumeCache(train_records, encoder, capacity)
    val_cache = train_cache if val_records is train_records else VolumeCache(val_records, encoder, capacity)

    if spatial_dims == 2:
        axes = AXES[axis_key]
        refs, weights = slice_index(train_cache, train_regions, axes, foreground)
        train: Dataset = SliceDataset(train_cache, train_regions, refs, patch, context, augment)
        val = None
        if val_regions:
            try:
                val_refs, _ = slice_index(val_cache, val_regions, axes, foreground)
            except ValueError:
                val_refs = []
            val = SliceDataset(val_cache, val_regions, val_refs, patch, context, None) if val_refs else None
    else:
        weights = None
        train = PatchDataset(train_cache, train_regions, patch, augment, foreground)
        val = PatchDataset(val_cache, val_regions, patch, None, foreground) if val_regions else None
    val_keys = evaluation_subset(int(data_cfg.get("val_items", 4)), len(val) if val is not None else 0)
    if val is None:
        log.warning(
            "no validation data (data.val_split / data.slice_split): validation and best.safetensors off"
        )
    log.info(
        "data: %d training volume(s), %d training item(s), %d validation item(s), patch %s, modality %s",
        len(train_records),
        len(train),
        len(val_keys),
        "x".join(map(str, patch)),
        modality,
    )
    return TrainingData(
        train=train,
        weights=weights,
        val=val,
        val_keys=val_keys,
        encoder=encoder,
        modality=modality,
        spatial_dims=spatial_dims,
        context=context,
        patch=patch,
        num_volumes=len(train_records),
        summary=summarize_data(
            train_records,
            items=len(train),
            val_items=len(val_keys),
            patch=patch,
            plane=plane_axes(spatial_dims, axis_key),
            scale=None if augment is None else augment.scale,
            scale_p=1.0 if augment is None else augment.p,
        ),
    )
