"""Which part of which volume a split may use: whole volumes, or slabs of one volume (``data.slice_split``).

With ``data.slice_split`` every ok record is cut along ``axis`` into three contiguous slabs::

    [ train ............ | gap | val ... | gap | test ... ]

``val`` and ``test`` are fractions of the slices (at least one slice each when > 0), taken by default from the
end of the axis; ``gap`` slices between the slabs belong to no split, so a 2.5D context window or a 3D patch of
the training slab never sees a held-out slice. ``end`` (a fraction of the axis, default 1) moves the held-out
block ``[val | gap | test]`` so that it ends there; the slices after it (past one more gap) train too::

    [ train ... | gap | val ... | gap | test ... | gap | train ... ]      (end < 1)

so the held-out slabs can sit in the middle of an organ rather than at the edge of the field of view. This is
how a single scan (the demo) can be trained on and evaluated honestly. Without it, a split is the records
whose manifest ``split`` field matches, each volume whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Region:
    """A box ``[lo, hi)`` of volume ``volume`` (an index into the split's record list)."""

    volume: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(h - l for l, h in zip(self.lo, self.hi))  # type: ignore[return-value]

    def view(self, array: np.ndarray) -> np.ndarray:
        """The region of a full ``(I, J, K)`` array (a view, no copy)."""
        return array[tuple(slice(l, h) for l, h in zip(self.lo, self.hi))]


@dataclass(frozen=True)
class SliceSplit:
    """Hold out contiguous slabs of each volume along ``axis`` (see the module docstring)."""

    axis: int = 2
    val: float = 0.1
    test: float = 0.1
    gap: int = 2
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise ValueError(f"data.slice_split.axis must be 0, 1 or 2, got {self.axis!r}")
        for name in ("val", "test"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.slice_split.{name} must be a fraction in [0, 1), got {value!r}")
        if self.gap < 0:
            raise ValueError(f"data.slice_split.gap must be >= 0 slices, got {self.gap!r}")
        if not 0.0 < self.end <= 1.0:
            raise ValueError(f"data.slice_split.end must be a fraction in (0, 1], got {self.end!r}")

    def bounds(self, n: int) -> dict[str, tuple[int, int]]:
        """``{split: (start, stop)}`` slice ranges along the axis for a volume with ``n`` slices.

        ``train`` is the training slab before the held-out block; with ``end < 1`` the slices after it train
        too (``train_ranges``).
        """
        n_test = math.ceil(self.test * n) if self.test > 0 else 0
        n_val = math.ceil(self.val * n) if self.val > 0 else 0
        stop = n if self.end >= 1.0 else max(1, min(n, round(self.end * n)))
        test = (stop - n_test, stop)
        val_stop = test[0] - (self.gap if n_test else 0)
        val = (val_stop - n_val, val_stop)
        train_stop = (val[0] if n_val else val_stop) - (self.gap if n_val else 0)
        if train_stop < 1:
            raise ValueError(
                f"data.slice_split (val={self.val}, test={self.test}, gap={self.gap}) leaves no training "
                f"slices in a volume with {n} slices along axis {self.axis}"
            )
        return {"train": (0, train_stop), "val": val, "test": test}

    def train_ranges(self, n: int) -> list[tuple[int, int]]:
        """All training slice ranges: the slab before the held-out block and, with ``end < 1``, the one after."""
        b = self.bounds(n)
        ranges = [b["train"]]
        held_out_stop = max(b["test"][1], b["val"][1])
        tail = held_out_stop + self.gap
        if self.end < 1.0 and tail < n:
            ranges.append((tail, n))
        return ranges


MIN_UNIT_VOXELS = 2  # a unit (2D slice or 3D patch) needs at least two voxels along each of its axes


def unit_problem(shape: tuple[int, ...], spatial_dims: int, axis: int = 2) -> str | None:
    """Why a volume of ``shape`` ``(I, J, K)`` gives no usable units, or ``None`` when it does.

    A 2D model's unit is a slice across ``axis``: its two in-plane axes need ``MIN_UNIT_VOXELS`` voxels (a
    single 2D image ``(I, J, 1)`` is fine across axis 2; across axis 0 or 1 it would give lines). A 3D model's
    unit is the volume: every axis needs them, so a single slice is too few slices for a 3D model.
    """
    if spatial_dims == 3:
        thin = [a for a in range(3) if shape[a] < MIN_UNIT_VOXELS]
        what = "a 3D model convolves across all three axes"
    else:
        thin = [a for a in range(3) if a != axis and shape[a] < MIN_UNIT_VOXELS]
        what = f"its 2D slices across axis {axis} would be a voxel thin"
    if not thin:
        return None
    shown = tuple(int(s) for s in shape)
    return f"shape {shown} has {int(shape[thin[0]])} voxel(s) along axis {thin[0]}: {what}"


def split_regions(
    shapes: list[tuple[int, int, int]], split: str, slice_split: SliceSplit | None
) -> list[Region]:
    """The regions of ``split`` for volumes of the given shapes (whole volumes without a slice split)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    regions = []
    for i, shape in enumerate(shapes):
        lo, hi = [0, 0, 0], list(shape)
        if slice_split is None:
            regions.append(Region(i, tuple(lo), tuple(hi)))  # type: ignore[arg-type]
            continue
        n = shape[slice_split.axis]
        ranges = slice_split.train_ranges(n) if split == "train" else [slice_split.bounds(n)[split]]
        for start, stop in ranges:
            if stop <= start:
                continue
            lo[slice_split.axis], hi[slice_split.axis] = start, stop
            regions.append(Region(i, tuple(lo), tuple(hi)))  # type: ignore[arg-type]
    return regions


def build_slice_split(cfg: Any) -> SliceSplit | None:
    """``data.slice_split`` (null, or a mapping with axis/val/test/gap) as a :class:`SliceSplit`."""
    if cfg is None or cfg is False:
        return None
    return SliceSplit(**dict(cfg))
