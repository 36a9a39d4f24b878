"""Geometry of a DICOM slice stack: orientation, order along the slice normal, spacing checks, RAS affine.

Pure NumPy (no pydicom): the inputs are the patient-space values DICOM stores, in LPS millimetres.

- ``iop`` is ImageOrientationPatient: six direction cosines, the *row* direction (the way the column index
  increases along a row) then the *column* direction (the way the row index increases down a column).
- ``pixel_spacing`` is PixelSpacing: ``(row spacing, column spacing)`` in mm, i.e. the distance between rows
  (along the column direction) first.
- ``positions`` are ImagePositionPatient values: the centre of the first transmitted pixel of each slice.

The volume built from a stack has axes ``(i, j, k) = (column, row, slice)`` (``pixel_array.T`` stacked on
the last axis), slices ascending along ``normal = row_direction x column_direction``. Its affine maps
``(i, j, k)`` to RAS+ millimetres as nibabel and dcm2niix do: the LPS affine with its first two rows negated.

Tolerances (documented in one place, used by the reader):

- two orientations are the same plane when every cosine differs by at most ``SAME_ORIENTATION_TOL``;
- ImageOrientationPatient is valid when both vectors have unit length and are orthogonal within
  ``ORIENTATION_TOL``;
- two slices are at the same position when their distances along the normal differ by at most
  ``SAME_POSITION_MM``;
- a step larger than ``GAP_FACTOR`` times the median step is a missing slice;
- otherwise every step, and every slice's distance from where a uniform grid puts it, must be within
  ``max(SPACING_REL_TOL * median step, SPACING_ABS_TOL_MM)``;
- slices are stacked along the normal when each position lies within ``TILT_ABS_TOL_MM`` plus
  ``tan(TILT_TOL_DEG)`` times its distance from the first slice of the line through the first slice along the
  normal; a declared GantryDetectorTilt larger than ``TILT_TOL_DEG`` is a tilt too.

Degenerate geometry (``degenerate_geometry``, the rule of :mod:`medrecon.io.grid`): non-finite orientation
cosines, positions or PixelSpacing; a zero-length orientation vector or two parallel ones (no slice normal);
a PixelSpacing or slice step outside the plausible voxel sizes; an affine that comes out singular.

A single slice is a volume of shape ``(columns, rows, 1)``: its slice axis is the normal scaled by
SliceThickness when that is a plausible voxel size, else by ``SINGLE_SLICE_MM`` (1 mm; the depth of one slice
changes no voxel value, only the affine written with the outputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.grid import check_affine, check_spacing, spacing_problem

ORIENTATION_TOL = 1e-3
SAME_ORIENTATION_TOL = 1e-3
SAME_POSITION_MM = 0.01
GAP_FACTOR = 1.5
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL_MM = 0.01
TILT_TOL_DEG = 0.1
TILT_ABS_TOL_MM = 0.01
SINGLE_SLICE_MM = 1.0

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_orientation(iop: Sequence[float]) -> np.ndarray:
    """Validate ImageOrientationPatient and return it as a ``(2, 3)`` array ``[row_dir, col_dir]``.

    Raises:
        RejectedInput: ``degenerate_geometry`` when the values are not finite, a vector has (nearly) zero
            length or the two are parallel; ``invalid_geometry`` when they are not unit length or not
            orthogonal.
    """
    cosines = np.asarray(iop, dtype=np.float64)
    if cosines.shape != (6,) or not np.all(np.isfinite(cosines)):
        raise RejectedInput(
            Reason.DEGENERATE_GEOMETRY, "ImageOrientationPatient must hold six finite numbers"
        )
    row_dir, col_dir = cosines[:3], cosines[3:]
    norms = np.array([np.linalg.norm(row_dir), np.linalg.norm(col_dir)])
    if np.any(norms <= ORIENTATION_TOL) or not np.linalg.norm(np.cross(row_dir, col_dir)) > ORIENTATION_TOL:
        raise RejectedInput(
            Reason.DEGENERATE_GEOMETRY,
            f"ImageOrientationPatient spans no plane (vector lengths {norms.round(4).tolist()}, or parallel)",
        )
    if np.any(np.abs(norms - 1.0) > ORIENTATION_TOL) or abs(float(row_dir @ col_dir)) > ORIENTATION_TOL:
        raise RejectedInput(
            Reason.INVALID_GEOMETRY,
            f"ImageOrientationPatient is not two orthogonal unit vectors (lengths {norms.round(4).tolist()}, "
            f"dot product {float(row_dir @ col_dir):.4f})",
        )
    return cosines.reshape(2, 3)


def check_pixel_spacing(pixel_spacing: Sequence[float]) -> np.ndarray:
    """Validate PixelSpacing ``(row spacing, column spacing)`` mm; return it as a float64 ``(2,)`` array.

    Raises:
        RejectedInput: ``degenerate_geometry`` unless it is two finite, positive, plausible voxel sizes.
    """
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    if spacing.shape != (2,):
        raise RejectedInput(Reason.DEGENERATE_GEOMETRY, "PixelSpacing must be two numbers")
    check_spacing(spacing, "PixelSpacing")
    return spacing


def slice_normal(iop: Sequence[float]) -> np.ndarray:
    """The slice normal ``row_direction x column_direction`` (LPS, unit length), shape ``(3,)``.

    Raises:
        RejectedInput: ``degenerate_geometry`` when the two directions are parallel, zero or not finite.
    """
    cosines = np.asarray(iop, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    length = float(np.linalg.norm(normal))
    if not length > ORIENTATION_TOL:
        raise RejectedInput(Reason.DEGENERATE_GEOMETRY, "ImageOrientationPatient gives no slice normal")
    return normal / length


def same_orientation(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two ImageOrientationPatient values are the same plane (within ``SAME_ORIENTATION_TOL``).

    Equal values are the same plane even when not finite, so a series with NaN cosines stays one series
    (refused as a whole) instead of splitting into one series per image.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.array_equal(a, b, equal_nan=True) or np.max(np.abs(a - b)) <= SAME_ORIENTATION_TOL)


def position_groups(positions: np.ndarray, normal: np.ndarray) -> list[list[int]]:
    """Order slices along ``normal`` and gather those at the same position.

    Args:
        positions: ``(N, 3)`` ImagePositionPatient values, LPS mm.
        normal: ``(3,)`` unit slice normal.

    Returns:
        Groups of indices into ``positions``, ascending along the normal; a group holds more than one index
        when slices lie within ``SAME_POSITION_MM`` of the group's first slice (duplicates to resolve). Ties
        keep the input order, so callers control which member comes first.
    """
    distances = np.asarray(positions, dtype=np.float64) @ normal
    order = np.argsort(distances, kind="stable")
    groups: list[list[int]] = []
    for index in order.tolist():
        if groups and distances[index] - distances[groups[-1][0]] <= SAME_POSITION_MM:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def same_position(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two ImagePositionPatient values are one point (within ``SAME_POSITION_MM`` on every axis)."""
    return bool(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) <= SAME_POSITION_MM)


@dataclass(frozen=True)
class StackGeometry:
    """Where a validated stack sits in space.

    Attributes:
        affine: ``(4, 4)`` float64, voxel ``(i, j, k)`` -> RAS mm.
        spacing: ``(column spacing, row spacing, slice spacing)`` mm; the slice spacing is the length of the
            mean step between consecutive positions.
    """

    affine: np.ndarray
    spacing: tuple[float, float, float]


def affine_ras(
    iop: Sequence[float], pixel_spacing: Sequence[float], origin: Sequence[float], step: Sequence[float]
) -> np.ndarray:
    """The ``(4, 4)`` voxel ``(column i, row j, slice k)`` -> RAS mm affine.

    Args:
        iop: ImageOrientationPatient (six cosines, LPS).
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` mm.
        origin: ImagePositionPatient of slice ``k = 0`` (LPS mm).
        step: LPS mm vector from one slice position to the next.
    """
    cosines = np.asarray(iop, dtype=np.float64)
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = cosines[:3] * spacing[1]  # i runs along a row: row direction, column spacing
    lps[:3, 1] = cosines[3:] * spacing[0]  # j runs down a column: column direction, row spacing
    lps[:3, 2] = np.asarray(step, dtype=np.float64)
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return LPS_TO_RAS @ lps


def stack_geometry(
    iop: Sequence[float],
    pixel_spacing: Sequence[float],
    positions: np.ndarray,
    gantry_tilt_deg: float = 0.0,
    thickness_mm: float | None = None,
) -> StackGeometry:
    """Validate a stack of distinct slice positions and return its affine.

    Args:
        iop: ImageOrientationPatient of the stack (validated with :func:`check_orientation`).
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` mm.
        positions: ``(K, 3)`` LPS mm, already ascending along the normal, one per slice (duplicates removed).
        gantry_tilt_deg: the largest declared GantryDetectorTilt of the stack, degrees.
        thickness_mm: SliceThickness, the slice axis of a single slice (see the module docstring).

    Raises:
        RejectedInput: ``degenerate_geometry``, ``gantry_tilt``, ``missing_slice``, ``non_uniform_spacing``,
            ``invalid_geometry``, ``too_few_slices`` (no slice at all).
    """
    cosines = check_orientation(iop)
    spacing = check_pixel_spacing(pixel_spacing)
    positions = np.asarray(positions, dtype=np.float64)
    count = positions.shape[0]
    if count < 1:
        raise RejectedInput(Reason.TOO_FEW_SLICES, "no slice")
    if not np.all(np.isfinite(positions)):
        raise RejectedInput(Reason.DEGENERATE_GEOMETRY, "ImagePositionPatient holds non-finite numbers")
    if count == 1:
        return _single_slice(cosines, spacing, positions[0], thickness_mm)
    if abs(gantry_tilt_deg) > TILT_TOL_DEG:
        raise RejectedInput(Reason.GANTRY_TILT, f"GantryDetectorTilt is {gantry_tilt_deg:g} degrees")
    normal = slice_normal(cosines.ravel())
    offsets = positions - positions[0]
    along = offsets @ normal
    across = np.linalg.norm(offsets - along[:, None] * normal, axis=1)
    allowed_across = TILT_ABS_TOL_MM + np.abs(along) * math.tan(math.radians(TILT_TOL_DEG))
    if np.any(across > allowed_across):
        worst = int(np.argmax(across - allowed_across))
        angle = math.degrees(math.atan2(across[worst], abs(along[worst]))) if along[worst] else 90.0
        raise RejectedInput(
            Reason.GANTRY_TILT,
            f"slice positions leave the slice normal by up to {angle:.2f} degrees "
            "(gantry tilt or shifted slices); resample before use",
        )
    steps = np.diff(along)
    if np.any(steps <= SAME_POSITION_MM):
        raise RejectedInput(Reason.INVALID_GEOMETRY, "slice positions are not distinct and ascending")
    median = float(np.median(steps))
    if np.any(steps > GAP_FACTOR * median):
        gap = int(np.argmax(steps))
        raise RejectedInput(
            Reason.MISSING_SLICE,
            f"a {steps[gap]:.3f} mm step after slice {gap} is more than {GAP_FACTOR}x the median "
            f"{median:.3f} mm step",
        )
    tolerance = max(SPACING_REL_TOL * median, SPACING_ABS_TOL_MM)
    mean_step = (along[-1] - along[0]) / (count - 1)
    drift = np.abs(along - mean_step * np.arange(count))
    if np.any(np.abs(steps - median) > tolerance) or np.any(drift > tolerance):
        raise RejectedInput(
            Reason.NON_UNIFORM_SPACING,
            f"slice steps range {steps.min():.4f}..{steps.max():.4f} mm (tolerance {tolerance:.4f} mm around "
            f"the median {median:.4f} mm)",
        )
    step = (positions[-1] - positions[0]) / (count - 1)
    affine = affine_ras(cosines.ravel(), spacing, positions[0], step)
    check_affine(affine, "slice stack")
    return StackGeometry(
        affine=affine, spacing=(float(spacing[1]), float(spacing[0]), float(np.linalg.norm(step)))
    )


def _single_slice(
    cosines: np.ndarray, spacing: np.ndarray, origin: np.ndarray, thickness_mm: float | None
) -> StackGeometry:
    """One slice: its slice axis is the normal times SliceThickness (else ``SINGLE_SLICE_MM``)."""
    depth = SINGLE_SLICE_MM
    if thickness_mm is not None and spacing_problem([thickness_mm]) is None:
        depth = float(thickness_mm)
    step = slice_normal(cosines.ravel()) * depth
    affine = affine_ras(cosines.ravel(), spacing, origin, step)
    check_affine(affine, "single slice")
    return StackGeometry(affine=affine, spacing=(float(spacing[1]), float(spacing[0]), depth))
