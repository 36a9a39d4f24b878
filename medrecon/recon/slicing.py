"""Volumes <-> the network's units of work: 2D slices along one array axis, or the whole volume for 3D models.

A 2D model sees slices ``(N, H, W)``: the volume ``(I, J, K)`` with the slice ``axis`` moved to the front and
the two remaining axes, in their array order, as ``(H, W)`` (for ``axis=2``, the default, ``H = I`` and
``W = J``: the acquisition plane of DICOM and NIfTI volumes, as ``medrecon.physics`` expects). A 3D model sees
one unit, the volume itself. A task's per-spatial-axis ``scale`` maps onto the array axes accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medrecon.data.regions import unit_problem
from medrecon.io.errors import Reason, RejectedInput
from medrecon.recon.geometry import in_plane_factors


@dataclass(frozen=True)
class Layout:
    """How an ``(I, J, K)`` array is cut into units.

    Attributes:
        spatial_dims: 2 (slices) or 3 (the whole volume).
        axis: the slice axis (0, 1 or 2) for 2D; ignored for 3D.
    """

    spatial_dims: int = 2
    axis: int = 2

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"the slice axis must be 0, 1 or 2, got {self.axis!r}")

    def check(self, shape: tuple[int, ...]) -> None:
        """Refuse a volume that gives no usable unit (``medrecon.data.regions.unit_problem``): a single slice
        ``(I, J, 1)`` is a volume for 2D models across axis 2, not for 3D models or slices across axis 0/1.

        Raises:
            RejectedInput: ``too_few_slices``.
        """
        problem = unit_problem(tuple(shape), self.spatial_dims, self.axis)
        if problem is not None:
            raise RejectedInput(Reason.TOO_FEW_SLICES, problem)

    def units(self, array: np.ndarray) -> np.ndarray:
        """``(I, J, K)`` -> ``(N, H, W)`` slices (2D) or ``(1, I, J, K)`` (3D), a contiguous float32 copy.

        Raises:
            RejectedInput: ``too_few_slices`` (see :meth:`check`).
        """
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 3:
            raise ValueError(f"expected a 3D volume (I, J, K), got shape {array.shape}")
        self.check(array.shape)
        stacked = np.moveaxis(array, self.axis, 0) if self.spatial_dims == 2 else array[None]
        return np.ascontiguousarray(stacked)

    def volume(self, units: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`units`: ``(N, H, W)`` or ``(1, I, J, K)`` -> ``(I, J, K)``."""
        units = np.asarray(units)
        return np.ascontiguousarray(np.moveaxis(units, 0, self.axis) if self.spatial_dims == 2 else units[0])

    def count(self, shape: tuple[int, ...]) -> int:
        """How many units a volume of ``shape`` gives."""
        return int(shape[self.axis]) if self.spatial_dims == 2 else 1

    def factors(self, scale: tuple[int, ...]) -> tuple[int, int, int]:
        """A task's ``scale`` (one factor per spatial axis of a unit) as factors per array axis."""
        if self.spatial_dims == 2:
            return in_plane_factors(scale, self.axis)
        scale = tuple(int(s) for s in scale)
        if len(scale) != 3:
            raise ValueError(f"a 3D task's scale must have three entries, got {scale}")
        return scale  # type: ignore[return-value]

    def box(self, shape: tuple[int, ...], lo: int, hi: int) -> tuple[slice, slice, slice]:
        """Index of the units ``[lo, hi)`` in the volume (all of it for 3D)."""
        index = [slice(None)] * 3
        if self.spatial_dims == 2:
            index[self.axis] = slice(lo, hi)
        return tuple(index)  # type: ignore[return-value]
