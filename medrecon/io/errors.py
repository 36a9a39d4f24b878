"""Why an input was refused: a stable reason code plus a human sentence (no patient data in either)."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Stable reason codes written to manifests and run records."""

    NOT_DICOM = "not_dicom"
    NON_IMAGE = "non_image"  # SR, RTSTRUCT, DICOMDIR, presentation states, ...
    MISSING_SLICE = "missing_slice"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    NON_UNIFORM_SPACING = "non_uniform_spacing"
    GANTRY_TILT = "gantry_tilt"
    TRUNCATED_PIXELS = "truncated_pixels"
    IMPLAUSIBLE_SIZE = "implausible_size"
    MISSING_CODEC = "missing_codec"
    DECODE_ERROR = "decode_error"
    MIXED_LOCALIZER = "mixed_localizer"
    MISSING_GEOMETRY = "missing_geometry"
    TOO_FEW_SLICES = "too_few_slices"
    INVALID_GEOMETRY = "invalid_geometry"
    DEGENERATE_GEOMETRY = "degenerate_geometry"  # singular/non-finite grid, implausible voxel sizes
    TRUNCATED_FILE = "truncated_file"
    NON_FINITE_VALUES = "non_finite_values"  # +/-inf voxels or no finite voxel (medrecon.io.finite)
    UNSUPPORTED = "unsupported"
    UNREADABLE = "unreadable"


class RejectedInput(Exception):
    """An input that medrecon refuses rather than guesses about.

    Args:
        reason: the stable code.
        detail: a sentence for humans; must not contain tag text that could identify a patient.
    """

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)
