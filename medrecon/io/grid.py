"""Degenerate voxel grids: one rule for every reader (NIfTI, DICOM, fastMRI HDF5).

A scan's grid is its voxel -> world affine (4x4, mm). medrecon refuses a grid rather than guess about it, with
the reason ``degenerate_geometry``, when

- an entry of the affine is NaN or infinite;
- a voxel axis has zero length, or the three axes are (numerically) coplanar: ``|det M| <=
  SINGULAR_REL_TOL * prod(|m_i|)`` for the 3x3 part ``M`` with columns ``m_i`` (relative, so 0.1 mm and 10 mm
  voxels are judged alike);
- a voxel size (column norm of ``M``) lies outside ``[MIN_VOXEL_MM, MAX_VOXEL_MM]``: no scanner resolves
  below a micrometre, and a voxel over 10 cm is a unit error (metres, inches) or a corrupt header.

Readers call :func:`check_affine` on the grid they are about to return and :func:`check_spacing` on spacing
values that arrive without an affine (DICOM PixelSpacing, the ISMRMRD header), when the archive is scanned
(``medrecon prepare``) and again when the pixels are read, so every command gives the same verdict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medrecon.io.errors import Reason, RejectedInput

MIN_VOXEL_MM = 1e-3  # 1 micrometre
MAX_VOXEL_MM = 100.0  # 10 cm
SINGULAR_REL_TOL = 1e-6


def spacing_problem(spacing: Sequence[float], what: str = "the voxel size") -> str | None:
    """Why voxel sizes (mm) are not plausible, or ``None`` when every one is in the allowed range."""
    values = np.asarray(spacing, dtype=np.float64)
    shown = ", ".join(f"{v:.6g}" for v in values)
    if not np.all(np.isfinite(values)):
        return f"{what} ({shown}) is not finite"
    if np.any(values <= 0):
        return f"{what} ({shown}) must be positive"
    if np.any(values < MIN_VOXEL_MM) or np.any(values > MAX_VOXEL_MM):
        return f"{what} ({shown} mm) lies outside the plausible {MIN_VOXEL_MM:g}..{MAX_VOXEL_MM:g} mm"
    return None


def affine_problem(affine: np.ndarray, what: str = "affine") -> str | None:
    """Why a voxel -> world matrix is non-finite or singular, or ``None`` (voxel sizes are not judged)."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return f"the {what} has non-finite entries"
    m = affine[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms <= 0) or abs(np.linalg.det(m)) <= SINGULAR_REL_TOL * float(np.prod(norms)):
        return f"the {what} is singular (zero voxel size or collinear axes)"
    return None


def check_spacing(spacing: Sequence[float], what: str = "the voxel size") -> tuple[float, ...]:
    """``spacing`` as floats; raises ``RejectedInput(degenerate_geometry)`` when it is not plausible."""
    problem = spacing_problem(spacing, what)
    if problem is not None:
        raise RejectedInput(Reason.DEGENERATE_GEOMETRY, problem)
    return tuple(float(s) for s in spacing)


def check_affine(affine: np.ndarray, what: str = "affine") -> tuple[float, float, float]:
    """Validate a voxel -> world affine; returns its voxel sizes (mm, column norms).

    Raises:
        RejectedInput: ``degenerate_geometry`` (see the module docstring).
    """
    problem = affine_problem(affine, what)
    if problem is not None:
        raise RejectedInput(Reason.DEGENERATE_GEOMETRY, problem)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    check_spacing(spacing, f"the voxel size of the {what}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))
