"""Evaluation of fastMRI k-space files: reconstruct from the file's measured k-space, score against its target.

An MRI evaluation whose volumes are fastMRI ``.h5`` files follows the fastMRI protocol
(``medrecon.evaluate.fastmri_protocol``) instead of medrecon's own (ground truth degraded by the task):

- **measurement** = the file's k-space. A file with a ``mask`` dataset (fastMRI's test and challenge files) is
  reconstructed from its own undersampling; a file without one is fully sampled (fastMRI's train and val
  files) and gets one mask of the task's kind per volume, shared by its slices (as fastMRI's data transforms
  draw one per file), drawn from the seed ``sha256(seed, "mask", id, 0)`` (``medrecon.recon.measure``).
  Columns with no sample anywhere in the file (the zero padding outside the acquired band) count as not
  measured. The measurement is encoded as ``medrecon reconstruct`` encodes k-space
  (``measure.kspace_measurement``), so evaluate scores exactly what reconstruct would write;
- **reference** = the file's ``reconstruction_rss`` (multi-coil) or ``reconstruction_esc`` (single-coil). A
  file without one (a test or challenge file) cannot be scored (``unsupported``);
- every method's result ``(slices, H, W)`` on the k-space grid is centre-cropped as the fastMRI-format output
  of ``medrecon reconstruct`` is (``medrecon.io.fastmri_out.recon_crop``: the target's size), then scored with
  the protocol's own crop and metrics.

A slice selection (``slices=``, or a slice split along the slice axis 2 of the volume) picks file slices;
a slice split across the image plane is refused (``unsupported``): the protocol scores whole slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrecon.errors import UsageError
from medrecon.io.errors import Reason, RejectedInput
from medrecon.physics.base import Task

#: the volume axis of a k-space file's slices (``kspace_volume``'s ``(W, H, slices)``)
SLICE_AXIS = 2


@dataclass(frozen=True)
class Sampling:
    """How a file's k-space was undersampled for the evaluation.

    Attributes:
        mask: float32 ``(W,)`` of 0/1, the columns used as measured.
        source: ``"file"`` (the file's own ``mask``) or ``"task"`` (drawn for a fully sampled file).
    """

    mask: np.ndarray
    source: str

    @property
    def acceleration(self) -> float:
        """``W`` / the number of measured columns."""
        return float(self.mask.size / max(1.0, float(self.mask.sum())))

    def describe(self) -> dict[str, Any]:
        return {"mask": self.source, "acceleration": round(self.acceleration, 3)}


def sampling(kspace: np.ndarray, mask: np.ndarray | None, task: Task, seed: int) -> Sampling:
    """The file's own ``mask``, else one mask of ``task`` (an ``MRITask``) from ``seed``, restricted to the
    columns the file holds samples in.

    Args:
        kspace: ``(slices, [coils,] H, W)`` complex, as read.
        mask: the file's ``(W,)`` mask, or ``None`` (a fully sampled file).
        seed: the volume's mask seed (63-bit).
    """
    if mask is not None:
        return Sampling(np.asarray(mask, dtype=np.float32).reshape(-1), "file")
    width = int(kspace.shape[-1])
    drawn = task.mask_func(width, torch.Generator().manual_seed(int(seed))).numpy()
    acquired = np.abs(kspace).reshape(-1, width).max(axis=0) > 0  # zero padding is not measured
    return Sampling((drawn * acquired).astype(np.float32), "task")


def selected_slices(rule: Any, volume_shape: tuple[int, int, int]) -> range:
    """The file slices ``rule`` (``medrecon.evaluate.selection.SliceRule``) evaluates.

    Raises:
        RejectedInput: ``unsupported`` for a slice split across the image plane; ``too_few_slices`` from the
            rule; ValueError: nothing selected.
    """
    box = rule.box(volume_shape, SLICE_AXIS, 2)
    if box is None:
        raise ValueError("the slice selection leaves no slice of this volume")
    if any(b != slice(None) for b in box[:2]):
        raise RejectedInput(
            Reason.UNSUPPORTED,
            "the slice split cuts across the image plane; the fastMRI protocol scores whole k-space slices",
        )
    return range(volume_shape[SLICE_AXIS])[box[SLICE_AXIS]]


def prepare_kspace_item(
    path: str | Path,
    item_id: str,
    index: int,
    rule: Any,
    layout: Any,
    task: Any,
    encoder: Any,
    context: int,
    seed: int,
    spacing: Any = None,
) -> tuple[Any, Any]:
    """Read one fastMRI file and build its evaluation item (``medrecon.evaluate.run.EvalItem``) and 2.5D
    condition, like ``evaluate.run.prepare_volume`` does for an image volume (``item_id`` names it: the mask
    and sampling seeds derive from it).

    The item's ``gt`` is the file's target ``(slices, h, w)`` (the selected slices), ``slice_axis`` 0, and
    ``to_volume`` crops a method's ``(slices, H, W)`` result to the target's grid
    (``medrecon.io.fastmri_out.recon_crop``); ``measured`` records the mask's source and acceleration.

    Raises:
        RejectedInput: the reader refuses the file; ``unsupported`` without a target or for a 3D model;
            ``non_finite_values`` for a target with NaN or infinite values.
    """
    from medrecon.evaluate.run import EvalItem
    from medrecon.io.fastmri_out import fastmri_reconstruction
    from medrecon.io.kspace_h5 import read_kspace_h5
    from medrecon.recon.measure import kspace_measurement, stacked_conditions, unit_seeds
    from medrecon.recon.spacing import SpacingPolicy

    if layout.spatial_dims != 2:
        raise RejectedInput(
            Reason.UNSUPPORTED, "measured k-space is reconstructed slice by slice (2D models)"
        )
    data = read_kspace_h5(path)
    info = data.info
    if data.target is None:
        raise RejectedInput(
            Reason.UNSUPPORTED,
            "no reconstruction_rss / reconstruction_esc to score against (fastMRI withholds the targets of "
            "its test and challenge files)",
        )
    if not np.isfinite(data.target).all():
        raise RejectedInput(Reason.NON_FINITE_VALUES, f"the file's {info.target_key} holds NaN or inf values")
    rows = selected_slices(rule, info.volume_shape)
    mask_seed = unit_seeds(item_id, 1, seed, "mask")[0]
    used = sampling(data.kspace, data.mask, task, mask_seed)
    meas, fitted = kspace_measurement(task, data.kspace, used.mask, encoder)
    cond = stacked_conditions(task, meas, context)  # over the whole volume: edge slices see real neighbours
    picked = list(rows)
    spacing_mm = info.encoded_spacing
    affine = None
    if spacing_mm is not None:  # (W, H, slices) axes, as reconstruct's k-space outputs
        affine = np.diag([spacing_mm[1], spacing_mm[0], spacing_mm[2], 1.0])
    plan = (spacing or SpacingPolicy()).inspect(item_id, affine, None, layout)

    def to_volume(units: np.ndarray) -> np.ndarray:  # (slices, H, W) -> the target's (slices, h, w)
        return fastmri_reconstruction(units, info)

    item = EvalItem(
        id=item_id,
        gt=np.ascontiguousarray(data.target[picked], dtype=np.float32),
        encoder=fitted,
        meas=meas.index(picked),
        to_volume=to_volume,
        slice_axis=0,
        index=index,
        start=rows.start,
        spacing=plan,
        measured=used.describe(),
    )
    return item, (None if cond is None else cond[picked])


def evaluation_protocol(sources: list[Any], task: Task) -> str:
    """``fastmri`` when ``task`` is an MRI task and every source is a fastMRI file (its ``kspace`` path set:
    ``medrecon.evaluate.run.Source``); ``simulated`` (medrecon's own protocol: ground truth degraded by the
    task) otherwise.

    Raises:
        UsageError: an MRI evaluation that mixes fastMRI files with image volumes (their scores would follow
            two protocols under one method name).
    """
    from medrecon.evaluate.fastmri_protocol import FASTMRI, SIMULATED
    from medrecon.recon.measure import is_mri

    kspace = sum(1 for s in sources if getattr(s, "kspace", None) is not None)
    if not is_mri(task) or kspace == 0:
        return SIMULATED
    if kspace < len(sources):
        raise UsageError(
            f"the selection mixes {kspace} fastMRI k-space file(s) with {len(sources) - kspace} image "
            "volume(s): k-space files are scored with the fastMRI protocol, images by simulating k-space; "
            "evaluate them from separate manifests"
        )
    return FASTMRI


def kspace_note(measured: list[dict[str, Any]]) -> str:
    """One report line: how the k-space files were undersampled (ids only)."""
    own = sum(1 for m in measured if m["mask"] == "file")
    rates = sorted({m["acceleration"] for m in measured})
    shown = ", ".join(f"{r:g}" for r in rates[:6]) + (", ..." if len(rates) > 6 else "")
    return (
        f"fastMRI protocol: {len(measured)} volume(s) reconstructed from the files' measured k-space "
        f"({own} with the file's own mask, {len(measured) - own} fully sampled with the task's mask, seeded "
        f"per volume; acceleration {shown}) and scored against the files' reconstruction_rss / "
        "reconstruction_esc after a centre crop to the target width (PSNR/SSIM data range = the target "
        "volume's maximum; no foreground metrics)"
    )
