"""In-plane voxel spacing in reconstruct and evaluate: flag inputs far from the spacing a model was trained
at, and optionally resample them to it (``spacing=native|auto``, ``spacing_tolerance=``).

**Which spacing is compared.** A network learns anatomy at the voxel size of its training items, which are
ground truth: the task's *output* grid. So an input is judged by the spacing of the grid the network works on,
the output grid of its reconstruction: reconstruct reads a degraded scan on the measurement grid and its output
grid is ``scale`` times finer along each axis (super-resolution: the input's spacing divided by the factor,
``medrecon.recon.geometry``; denoising and MRI: the input's own grid); evaluate degrades ground truth, whose grid
*is* the output grid. Only the two in-plane axes of a unit are compared (``medrecon.card.plane_axes``: the axes
other than the slice axis of a 2D model, the first two of a 3D one), each on its own, with the model's training
range ``(low, high)`` (``medrecon.card.training_plane_spacing``: the training volumes' in-plane spacing, widened
by the scale augmentation). An input is *outside* when a plane axis lies outside
``[low / spacing_tolerance, high * spacing_tolerance]`` (default 1.5, ``medrecon.card.SPACING_TOLERANCE``); it is
logged once per item (by id) and noted in its record. Checkpoints that do not record their spacing (no training
card) and k-space without an encoded spacing are not checked.

**spacing=auto.** An item outside the band is resampled in plane, slice by slice, so that its output grid has
the nearest spacing of the training range (each plane axis clamped into ``[low, high]``): the measurement
(the degraded image) is resampled before reconstruction, and the reconstruction back to the item's native output
grid after (area averaging where a grid shrinks, linear interpolation where it grows:
``medrecon.data.transforms.resize_plane``). Items inside the band are reconstructed as with ``native``. It helps
when the input is much *coarser* than the training data, or much finer than it for a model whose prior is tied to
the anatomy's size in voxels; it costs what resampling costs: a finer input is averaged down to the training
spacing (its finest detail is lost), and the measurement's noise is no longer the white noise of the task's
model. It is refused for MRI tasks: their measurement is k-space on the scanner's grid, and a resampled image
is not a measurement of that k-space (nor does the data consistency know its mask and coils).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medrecon.card import SPACING_TOLERANCE, plane_axes, training_plane_spacing
from medrecon.errors import UsageError
from medrecon.physics.base import Measurement, OperatorParams

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("native", "auto")


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


@dataclass(frozen=True)
class SpacingPlan:
    """What happens to one item's in-plane grid.

    Attributes:
        spacing: in-plane spacing (mm) of the item's output grid, one value per plane axis of a unit; empty when
            unknown.
        outside: the spacing lies outside the model's tolerance band.
        native: the output grid's in-plane size of a unit (``to_native``'s target).
        target: the output-grid spacing the network works at (``spacing=auto``, outside items); ``None``: the
            native grid, no resampling.
        note: a sentence for the run record or report (empty when not outside).
    """

    spacing: tuple[float, ...] = ()
    outside: bool = False
    native: tuple[int, ...] = ()
    target: tuple[float, ...] | None = None
    note: str = ""

    @property
    def resamples(self) -> bool:
        return self.target is not None

    def _resize(self, x: Tensor, size: Sequence[int]) -> Tensor:
        from medrecon.data.transforms import resize_plane

        n, c, *spatial = x.shape
        flat = x.detach().to("cpu", torch.float32).reshape(n * c, *spatial).numpy()
        out = resize_plane(flat, size)
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(n, c, *out.shape[1:]).to(x.device)

    def to_model(self, x: Tensor) -> Tensor:
        """Measurement-grid units ``(N, C, *S)`` resampled in plane to the training spacing (identity unless
        :attr:`resamples`): each plane size becomes ``round(S_a * spacing_a / target_a)`` (at least 1)."""
        if self.target is None:
            return x
        spatial = x.shape[2:]
        size = [
            max(1, round(int(spatial[a]) * s / t)) for a, (s, t) in enumerate(zip(self.spacing, self.target))
        ]
        return self._resize(x, size)

    def measurement(self, meas: Measurement) -> Measurement:
        """An image-domain measurement with ``y`` resampled by :meth:`to_model` (noise level kept)."""
        if self.target is None:
            return meas
        if meas.params.mask is not None or meas.params.maps is not None or torch.is_complex(meas.y):
            raise ValueError("only image-domain measurements can be resampled (spacing=auto)")
        return Measurement(self.to_model(meas.y), OperatorParams(), meas.noise_std)

    def to_native(self, x: Tensor | None) -> Tensor | None:
        """A reconstruction ``(N, C, *S')`` on the model's grid resampled in plane to :attr:`native`."""
        if self.target is None or x is None:
            return x
        return self._resize(x, self.native)


@dataclass(frozen=True)
class SpacingPolicy:
    """``spacing=`` and ``spacing_tolerance=`` for one run, and the model's training range.

    Attributes:
        mode: ``native`` or ``auto``.
        training: ``(low, high)`` in-plane spacing in mm the model saw, or ``None`` (unknown: no checks).
        tolerance: the band is ``[low / tolerance, high * tolerance]``.
    """

    mode: str = "native"
    training: tuple[float, float] | None = None
    tolerance: float = SPACING_TOLERANCE

    @property
    def band(self) -> tuple[float, float] | None:
        if self.training is None:
            return None
        return self.training[0] / self.tolerance, self.training[1] * self.tolerance

    def describe(self) -> dict[str, Any]:
        """The policy as plain data (evaluate's report)."""
        band = self.band
        return {
            "mode": self.mode,
            "training_mm": None if self.training is None else [round(v, 6) for v in self.training],
            "tolerance": self.tolerance,
            "band_mm": None if band is None else [round(v, 6) for v in band],
        }

    def inspect(
        self, item_id: str, affine: np.ndarray | None, shape: Sequence[int] | None, layout: Any
    ) -> SpacingPlan:
        """The plan of one item from its *output* grid: 4x4 affine (RAS mm) and shape ``(I, J, K)``.

        Logs a warning (the id only) when the item is outside the band. ``affine=None``: the spacing is unknown,
        nothing to do; ``shape=None``: the item is never resampled (k-space: ``auto`` is refused for MRI).
        """
        if affine is None:
            return SpacingPlan()
        plane = plane_axes(layout.spatial_dims, layout.axis)
        columns = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
        spacing = tuple(float(columns[a]) for a in plane)
        native = () if shape is None else tuple(int(shape[a]) for a in plane)
        band = self.band
        if band is None or all(band[0] <= s <= band[1] for s in spacing):
            return SpacingPlan(spacing, False, native)
        low, high = self.training  # type: ignore[misc]
        note = (
            f"in-plane spacing {_mm(spacing)} mm (output grid) is outside {band[0]:.3g}-{band[1]:.3g} mm: the "
            f"model was trained at {low:.3g}-{high:.3g} mm (spacing_tolerance={self.tolerance:g})"
        )
        target = None
        if self.mode == "auto" and native:
            target = tuple(min(max(s, low), high) for s in spacing)
            note += f"; resampled to {_mm(target)} mm for the network and back (spacing=auto)"
        else:
            note += "; reconstructed on its native grid (spacing=auto resamples it)"
        log.warning("%s: %s", item_id, note)
        return SpacingPlan(spacing, True, native, target, note)


def spacing_policy(cfg: Any, model: Any, task: Any) -> SpacingPolicy:
    """The run's policy from ``cfg.spacing`` / ``cfg.spacing_tolerance`` and the checkpoint (``None`` for
    baselines without one: nothing to compare with).

    Raises:
        UsageError: an unknown mode, a tolerance that is not a number > 1, or ``auto`` for an MRI task.
    """
    from medrecon.recon.measure import is_mri

    mode = cfg.get("spacing", "native")
    if mode not in MODES:
        raise UsageError(f"spacing={mode!r} is not one of {', '.join(MODES)}")
    tolerance = cfg.get("spacing_tolerance", SPACING_TOLERANCE)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 1 < tolerance < 1e3:
        raise UsageError(f"spacing_tolerance={tolerance!r} must be a number > 1 (1.5: within 1/1.5 .. 1.5x)")
    if mode == "auto" and is_mri(task):
        raise UsageError(
            f"spacing=auto is not defined for the MRI task {task.name}: its measurement is k-space on the "
            "scanner's grid, and a resampled image is not a measurement of it; use spacing=native"
        )
    training = None
    if model is not None:
        training = training_plane_spacing(model.card, model.config, model.spatial_dims)
    policy = SpacingPolicy(str(mode), training, float(tolerance))
    if training is not None:
        band = policy.band
        log.info(
            "the model was trained at in-plane spacing %.3g-%.3g mm; inputs outside %.3g-%.3g mm are flagged "
            "(spacing_tolerance=%g, spacing=%s)",
            *training,
            *band,  # type: ignore[misc]
            policy.tolerance,
            mode,
        )
    elif model is not None:
        log.info("the checkpoint does not record its training spacing: input spacing is not checked")
    if mode == "auto" and training is None:
        log.warning("spacing=auto: no training spacing is known, so every item keeps its native grid")
    return policy


def flagged_entry(item_id: str, plan: SpacingPlan) -> dict[str, Any]:
    """A flagged item for evaluate's report: its id, output-grid spacing and whether it was resampled."""
    return {
        "id": item_id,
        "spacing_mm": [round(s, 6) for s in plan.spacing],
        "resampled_to_mm": None if plan.target is None else [round(t, 6) for t in plan.target],
    }


def report_note(policy: SpacingPolicy, flagged: Sequence[dict[str, Any]], volumes: int) -> str | None:
    """One line for evaluate's report: the training spacing and the volumes outside it (``None``: unknown)."""
    if policy.training is None or policy.band is None:
        return None
    low, high = policy.training
    text = f"in-plane spacing: the model was trained at {low:.3g}-{high:.3g} mm; "
    if not flagged:
        return text + f"all {volumes} volume(s) lie within {policy.band[0]:.3g}-{policy.band[1]:.3g} mm"
    listed = ", ".join(f"{f['id']} ({_mm(f['spacing_mm'])} mm)" for f in flagged[:10])
    more = f" and {len(flagged) - 10} more" if len(flagged) > 10 else ""
    how = "resampled to it for the methods and back" if policy.mode == "auto" else "reconstructed as they are"
    band = f"{policy.band[0]:.3g}-{policy.band[1]:.3g} mm"
    return (
        f"{text}{len(flagged)} of {volumes} volume(s) lie outside {band} (spacing_tolerance="
        f"{policy.tolerance:g}; spacing={policy.mode}: {how}): {listed}{more}"
    )
