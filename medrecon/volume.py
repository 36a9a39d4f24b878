"""The one record every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A scan on a regular grid.

    Attributes:
        array: voxel values, shape ``(I, J, K)`` (or ``(I, J, K, T)`` for an explicit 4D series), float32, in the
            scanner's physical units after rescale (HU for CT, arbitrary units for MR). Axis order follows the
            affine: voxel index ``(i, j, k)`` maps to world position ``affine @ [i, j, k, 1]``.
        affine: 4x4 float64 matrix from voxel index to RAS+ world coordinates in millimetres (NIfTI convention).
        meta: free-form, **patient-identifier-free** metadata (``modality``, ``source_format``, ``spacing``, and
            for DICOM sources the UIDs a derived-series writer needs to stay in the same study).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim not in (3, 4):
            raise ValueError(f"Volume array must be 3D or 4D, got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))
