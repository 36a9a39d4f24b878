"""From an input to the engine's job, and from the job's results back to a volume (reconstruct and the API).

The input *is* the measurement: a degraded image volume is encoded with the checkpoint's encoder fitted on it
(else ``encoder`` options for its modality), cut into units (``Setup.layout``), resampled to the training
spacing with ``spacing=auto`` (``medrecon.recon.spacing``), and every unit is reconstructed on the task's output
grid (``medrecon.recon.measure``); measured k-space (fastMRI HDF5, MRI tasks) becomes an encoded k-space
measurement. Every unit's seed derives from the run's seed, the item id and the unit index
(``measure.unit_seeds``), so a result does not depend on batching or order.

- :func:`prepare_job`: an archive item (``medrecon.io.archive.Item`` or a manifest record) -> :class:`Job`;
- :func:`volume_job`: an in-memory image ``Volume`` -> :class:`Job` (what ``prepare_job`` does after reading);
- :func:`decode_result`: a finished job's ``(mean, std)`` units -> volumes in scanner units on the output grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medrecon.recon.engine import Job
from medrecon.recon.setup import Setup, base_encoder

log = logging.getLogger("medrecon.reconstruct")


@dataclass
class ItemContext:
    """What finishing an item needs: the input, its encoder, and how to map units back to a volume."""

    item: Any  # the archive item or manifest record (None for an in-memory volume)
    source: Any  # the input Volume, or None (k-space)
    encoder: Any
    affine: np.ndarray  # the output grid, 4x4 voxel -> RAS mm
    meta: dict[str, Any]
    assemble: Any  # (N, *S) units -> (I, J, K) array
    started: float
    nonfinite: Any = None  # the input's NonFinite counts (medrecon.io.finite)
    note: str = ""  # what was done to the input (NaN voxels replaced), for the run record
    spacing: Any = None  # its SpacingPlan (medrecon.recon.spacing): flagged, resampled for the network


def item_encoder(setup: Setup, modality: str | None) -> Any:
    """The unfitted encoder for an item: the checkpoint's, else ``setup.encoder_options`` for its modality."""
    if setup.encoder is not None:
        return setup.encoder
    return base_encoder(None, setup.encoder_options, modality)


def prepare_job(item: Any, setup: Setup) -> Job:
    """Read an item and build its job: encoded measurement units, seeds, 2.5D conditions, and the output grid.

    Raises:
        RejectedInput: the reader refuses the item, or the task cannot use it.
    """
    from medrecon.io.archive import load_item
    from medrecon.io.errors import RejectedInput
    from medrecon.io.finite import NonFinite
    from medrecon.recon.measure import is_mri, kspace_measurement
    from medrecon.recon.spacing import SpacingPolicy

    started = time.perf_counter()
    task, layout = setup.task, setup.layout
    if item.status != "ok":
        raise RejectedInput(_reason(item.reason), item.detail or "rejected when the archive was scanned")
    if not (item.format == "h5" and is_mri(task)):
        return volume_job(load_item(item), item.id, setup, item=item, started=started)
    from medrecon.io.kspace_h5 import read_kspace_h5

    data = read_kspace_h5(item.paths[0])
    meas, encoder = kspace_measurement(task, data.kspace, data.mask, item_encoder(setup, "MR"))
    spacing = data.info.encoded_spacing
    col_mm, row_mm, slice_mm = (spacing[1], spacing[0], spacing[2]) if spacing else (1.0, 1.0, 1.0)
    affine = np.diag([col_mm, row_mm, slice_mm, 1.0])
    plan = (setup.spacing or SpacingPolicy()).inspect(item.id, affine if spacing else None, None, layout)

    def assemble(units: np.ndarray) -> np.ndarray:  # (slices, H, W) -> (W, H, slices), like kspace_volume
        return np.ascontiguousarray(np.transpose(units, (2, 1, 0)))

    nonfinite = NonFinite()  # read_kspace_h5 refuses non-finite k-space
    meta = {"modality": "MR"}
    context = ItemContext(item, None, encoder, affine, meta, assemble, started, nonfinite, plan.note, plan)
    return _job(item.id, setup, meas, context)


def volume_job(source: Any, key: str, setup: Setup, *, item: Any = None, started: float | None = None) -> Job:
    """The job of an image volume already in memory (a degraded scan, scanner units).

    Args:
        source: a ``Volume`` ``(I, J, K)``; ``meta["nonfinite"]``/``meta["nan_fill"]`` as ``load_item`` sets
            them (NaN voxels already replaced), ``meta["modality"]`` chooses the encoder without a checkpoint.
        key: the item id (the job's key; every unit's seed derives from it).
        setup: the reconstruction's set-up.
        item: the archive item it was read from (``None`` for an array).
        started: when work on the item began (``time.perf_counter()``), for its record.

    Raises:
        RejectedInput: ``unsupported`` (not one 3D volume, or an MRI task: its measurement is k-space),
            ``too_few_slices`` (see ``Layout.check``).
    """
    from medrecon.io.errors import Reason, RejectedInput
    from medrecon.io.finite import NonFinite
    from medrecon.recon.geometry import upsampled_affine
    from medrecon.recon.measure import image_measurement
    from medrecon.recon.spacing import SpacingPolicy

    started = time.perf_counter() if started is None else started
    task, layout = setup.task, setup.layout
    counts = source.meta.get("nonfinite")
    nonfinite = NonFinite.from_dict(counts) if counts else NonFinite()
    if source.array.ndim != 3:
        raise RejectedInput(Reason.UNSUPPORTED, f"a {source.array.ndim}D array is not a single 3D volume")
    modality = source.meta.get("modality")
    encoder = item_encoder(setup, modality).for_volume(source.array)
    units = torch.from_numpy(encoder.encode(layout.units(source.array)))[:, None]
    factors = layout.factors(tuple(task.scale))
    affine = upsampled_affine(source.affine, factors)
    out_shape = tuple(int(n) * int(f) for n, f in zip(source.array.shape, factors))
    plan = (setup.spacing or SpacingPolicy()).inspect(key, affine, out_shape, layout)
    meas = image_measurement(task, plan.to_model(units))  # spacing=auto: on the training grid
    meta = {"modality": modality}
    if isinstance(source.meta.get("nifti"), dict):
        meta["nifti"] = dict(source.meta["nifti"])
    note = ""
    if nonfinite.nan:
        note = f"{nonfinite.nan} NaN voxel(s) read as the background value {source.meta['nan_fill']:.6g}"
        log.info("item %s: %s", key, note)
    note = "; ".join(n for n in (note, plan.note) if n)
    context = ItemContext(item, source, encoder, affine, meta, layout.volume, started, nonfinite, note, plan)
    return _job(key, setup, meas, context)


def _job(key: str, setup: Setup, meas: Any, context: ItemContext) -> Job:
    from medrecon.recon.measure import stacked_conditions, unit_seeds

    cond = stacked_conditions(setup.task, meas, setup.context)
    seeds = unit_seeds(key, int(meas.y.shape[0]), int(setup.seed))
    return Job(key=key, method=setup.method_name, meas=meas, seeds=seeds, cond=cond, context=context)


def decode_result(
    context: ItemContext, mean: torch.Tensor, std: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A finished job's units as volumes on the item's output grid, in scanner units.

    Args:
        context: the job's :class:`ItemContext`.
        mean: ``(N, 1, *S)`` encoded reconstruction units (on the model's grid with ``spacing=auto``).
        std: the posterior standard deviation units, or ``None``.

    Returns:
        ``(reconstruction (I, J, K), std (I, J, K) or None)``; the std scaled from encoded to scanner units.
    """
    if context.spacing is not None:  # spacing=auto: from the training grid back to the item's output grid
        mean, std = context.spacing.to_native(mean), context.spacing.to_native(std)
    encoder = context.encoder
    array = context.assemble(encoder.decode(mean[:, 0].numpy()))
    if std is None:
        return array, None
    scale = (float(encoder.high) - float(encoder.low)) / 2.0
    return array, context.assemble(std[:, 0].numpy()) * scale


def _reason(code: str | None) -> Any:
    from medrecon.io.errors import Reason

    try:
        return Reason(code)
    except ValueError:
        return Reason.UNREADABLE
