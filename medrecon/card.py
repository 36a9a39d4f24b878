"""What training records about a model beside its weights: a summary of its data and its best validation score.

Stored in a checkpoint's ``card`` metadata field (``medrecon.checkpoint``) and shown by ``medrecon info``. It
holds counts, modality codes and geometry ranges only -- never ids, paths or anything read from a header that
could identify a patient. Checkpoints written before the card existed have none (``info`` says "not recorded").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medrecon.schema import Float, Int, SchemaError, Seq, Text, check_mapping, quote

MAX_COUNT = 10**9
_SHAPE = Seq(Int(1, 10**6), 3, 3)
_SPACING = Seq(Float(0.0, 1e4), 3, 3)


@dataclass(frozen=True)
class DataSummary:
    """The training data of a model.

    Attributes:
        volumes: training volumes (manifest records).
        items: training items (2D slices, or 3D volumes sampled as patches).
        val_items: validation items scored during training.
        modalities: training volumes per modality code (``MR``, ``CT``, ``unknown``).
        shape_min, shape_max: per-axis range of the volumes' shapes ``(I, J, K)`` in voxels.
        spacing_median, spacing_min, spacing_max: per-axis median and range of the voxel spacing in mm along
            ``(I, J, K)`` -- the resolution the model was trained at; ``None`` when no record had a spacing.
        patch: the training patch size in voxels.
        plane_spacing: ``(low, high)`` in-plane voxel spacing in mm the network saw: the training volumes'
            spacing along the image-plane axes of the training items (:func:`plane_axes`), widened by the
            in-plane scale augmentation (a zoom by ``s`` shows spacing ``d / s``); ``None`` when no record had a
            spacing, or in cards written before the field (see :func:`training_plane_spacing`).
    """

    volumes: int
    items: int
    val_items: int
    modalities: dict[str, int]
    shape_min: tuple[int, ...] | None
    shape_max: tuple[int, ...] | None
    spacing_median: tuple[float, ...] | None
    spacing_min: tuple[float, ...] | None
    spacing_max: tuple[float, ...] | None
    patch: tuple[int, ...]
    plane_spacing: tuple[float, float] | None = None


@dataclass(frozen=True)
class ValidationScore:
    """The best validation during training (by PSNR): mean PSNR in dB and SSIM, and the step it was reached."""

    psnr: float
    ssim: float
    step: int


@dataclass(frozen=True)
class TrainingCard:
    """The ``card`` metadata field of a checkpoint; any part may be missing.

    ``autoencoder`` (latent models only): the best validation of the frozen autoencoder, i.e. how well it
    reconstructs held-out images by itself -- the ceiling of anything the latent model can do.
    """

    data: DataSummary | None = None
    validation: ValidationScore | None = None
    autoencoder: ValidationScore | None = None

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        if value["autoencoder"] is None:  # cards of other models keep the form they had before the field
            del value["autoencoder"]
        return value

    @classmethod
    def from_dict(cls, value: Any) -> TrainingCard:
        """The card stored in a checkpoint, checked field by field.

        Raises:
            SchemaError: an unknown key, or a value of the wrong type or range.
        """
        fields = {"data": _Nested(), "validation": _Nested(), "autoencoder": _Nested()}
        top = check_mapping(value, fields, "card")
        data = top.get("data")
        val = top.get("validation")
        ae = top.get("autoencoder")
        return cls(
            data=None if data is None else _data_summary(data),
            validation=None
            if val is None
            else ValidationScore(**check_mapping(val, _SCORE, "card.validation", _SCORE)),
            autoencoder=None
            if ae is None
            else ValidationScore(**check_mapping(ae, _SCORE, "card.autoencoder", _SCORE)),
        )


class _Nested:
    """A nested mapping (or null), checked by the caller."""

    def check(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, Mapping):
            return value
        raise SchemaError(f"{where} must be a mapping or null, got {quote(value)}")


class _Counts:
    """A mapping of modality codes to counts."""

    def check(self, value: Any, where: str) -> Any:
        if not isinstance(value, Mapping) or len(value) > 64:
            raise SchemaError(f"{where} must be a mapping of at most 64 modality codes to counts")
        for key, count in value.items():
            Text(max_len=16).check(key, f"{where} key")
            Int(0, MAX_COUNT).check(count, f"{where}.{key}")
        return value


_SCORE = {"psnr": Float(-1e3, 1e3), "ssim": Float(-1.0, 1.0), "step": Int(0, 10**12)}
_DATA = {
    "volumes": Int(0, MAX_COUNT),
    "items": Int(0, MAX_COUNT),
    "val_items": Int(0, MAX_COUNT),
    "modalities": _Counts(),
    "shape_min": _SHAPE,
    "shape_max": _SHAPE,
    "spacing_median": _SPACING,
    "spacing_min": _SPACING,
    "spacing_max": _SPACING,
    "patch": Seq(Int(1, 10**5), 2, 3),
    "plane_spacing": Seq(Float(0.0, 1e6), 2, 2),
}
_OPTIONAL = ("shape_min", "shape_max", "spacing_median", "spacing_min", "spacing_max", "plane_spacing")


def _data_summary(value: Mapping[str, Any]) -> DataSummary:
    present = {k: v for k, v in value.items() if not (k in _OPTIONAL and v is None)}
    checked = check_mapping(present, _DATA, "card.data", [k for k in _DATA if k not in _OPTIONAL])
    return DataSummary(
        volumes=checked["volumes"],
        items=checked["items"],
        val_items=checked["val_items"],
        modalities=dict(checked["modalities"]),
        patch=tuple(checked["patch"]),
        **{k: tuple(checked[k]) if k in checked else None for k in _OPTIONAL},
    )


def summarize_data(
    records: Sequence[Any],
    *,
    items: int,
    val_items: int,
    patch: Sequence[int],
    plane: Sequence[int] = (0, 1),
    scale: Sequence[float] | None = None,
    scale_p: float = 1.0,
) -> DataSummary:
    """The summary of the training records (manifest records with ``modality``, ``shape``, ``spacing``).

    Args:
        records: the training volumes.
        items: training items (slices or patch sources) the data layer built from them.
        val_items: validation items scored during training.
        patch: the training patch size.
        plane: the volume axes in the image plane of the training items (:func:`plane_axes`).
        scale: the in-plane scale augmentation's ``(lo, hi)`` zoom range, or ``None``.
        scale_p: the probability that a sample is zoomed (below 1 the native spacing is seen as well).
    """
    modalities = Counter(_code(getattr(r, "modality", None)) for r in records)
    # only values the card's schema accepts, so a card is always writable (and loadable)
    shapes = np.array([r.shape for r in records if _fits(r.shape, _SHAPE)], dtype=np.int64)
    spacings = np.array([r.spacing for r in records if _fits(r.spacing, _SPACING)], dtype=np.float64)

    def ints(a: np.ndarray) -> tuple[int, ...]:
        return tuple(int(v) for v in a)

    def floats(a: np.ndarray) -> tuple[float, ...]:
        return tuple(round(float(v), 6) for v in a)

    plane_spacing = None
    if len(spacings):
        low = float(spacings[:, list(plane)].min())
        high = float(spacings[:, list(plane)].max())
        plane_spacing = widen_by_scale((low, high), scale, scale_p)
    return DataSummary(
        volumes=len(records),
        items=int(items),
        val_items=int(val_items),
        modalities=dict(sorted(modalities.items())),
        shape_min=ints(shapes.min(0)) if len(shapes) else None,
        shape_max=ints(shapes.max(0)) if len(shapes) else None,
        spacing_median=floats(np.median(spacings, 0)) if len(spacings) else None,
        spacing_min=floats(spacings.min(0)) if len(spacings) else None,
        spacing_max=floats(spacings.max(0)) if len(spacings) else None,
        patch=tuple(int(p) for p in patch),
        plane_spacing=None if plane_spacing is None else floats(np.asarray(plane_spacing)),
    )


def _fits(value: Any, option: Seq) -> bool:
    try:
        option.check(None if value is None else list(value), "value")
    except SchemaError:
        return False
    return True


def _code(modality: Any) -> str:
    """A modality code as stored: upper case, ``unknown`` when missing, ``other`` when not a plain code."""
    code = str(modality or "unknown").upper()
    try:
        return Text(max_len=16).check(code, "modality")
    except SchemaError:
        return "other"


# ------------------------------------------------------------------------------------------------ spacing
#: Reconstruct and evaluate warn about an input whose in-plane spacing (on the grid the network works on) lies
#: outside ``[low / SPACING_TOLERANCE, high * SPACING_TOLERANCE]``, ``(low, high)`` the training range
#: (:attr:`DataSummary.plane_spacing`); ``spacing_tolerance=`` changes it.
SPACING_TOLERANCE = 1.5


def plane_axes(spatial_dims: int, axis: int | str = 2) -> tuple[int, ...]:
    """The volume axes ``(I, J, K)`` that lie in the image plane of a model's units.

    2D slices along ``axis`` have the two other axes in plane (``axis="all"``: every axis is in the plane of
    some slices); 3D patches have their first two axes in plane (the tasks' image plane).
    """
    if spatial_dims == 3:
        return (0, 1)
    slice_axes = (0, 1, 2) if axis == "all" else (int(axis),)
    return tuple(a for a in range(3) if any(a != s for s in slice_axes))


def widen_by_scale(
    spacing: tuple[float, float], scale: Sequence[float] | None, p: float = 1.0
) -> tuple[float, float]:
    """The in-plane spacing range seen when samples of ``spacing`` are zoomed by factors in ``scale``
    (a zoom by ``s`` shows ``d / s``); with ``p < 1`` the native range is seen too."""
    if scale is None:
        return spacing
    low, high = spacing[0] / float(scale[1]), spacing[1] / float(scale[0])
    if p < 1:
        low, high = min(low, spacing[0]), max(high, spacing[1])
    return low, high


def training_plane_spacing(
    card: TrainingCard | None, config: Mapping[str, Any] | None, spatial_dims: int
) -> tuple[float, float] | None:
    """The in-plane spacing range (mm) a model saw in training, or ``None`` when its checkpoint does not say.

    The card's :attr:`DataSummary.plane_spacing`; for cards written before that field (no scale augmentation
    existed then), the volumes' spacing range along the image-plane axes of the stored ``data.axis``.
    Checkpoints without a card (or whose records had no spacing) give ``None``: unknown.
    """
    data = None if card is None else card.data
    if data is None:
        return None
    if data.plane_spacing is not None:
        return data.plane_spacing
    if data.spacing_min is None or data.spacing_max is None:
        return None
    stored = (config or {}).get("data") if isinstance(config, Mapping) else None
    axis = stored.get("axis", 2) if isinstance(stored, Mapping) else 2
    plane = plane_axes(spatial_dims, axis if axis in (0, 1, 2, "all") else 2)
    return min(data.spacing_min[a] for a in plane), max(data.spacing_max[a] for a in plane)
