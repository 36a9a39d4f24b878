"""Non-finite voxels (NaN, +inf, -inf): one policy, applied wherever a scan becomes a ``Volume``.

Neuroimaging pipelines (SPM, FSL, ANTs) store the background outside a brain mask as NaN, and one NaN or inf
that reaches an interpolation, an FFT or a network spreads over its whole slice. So every command reads
volumes through ``medrecon.io.archive.load_item``, which applies this policy:

- **NaN is "no signal"**: every NaN voxel becomes the volume's *background value*, its smallest finite value.
  That is air for CT (about -1000 HU), the noise floor for MR magnitude, and the value the intensity encoder
  maps to its zero level -1 (a percentile encoder's 0.5 % point is the background whenever the background
  fills more than 0.5 % of the volume; a CT window clips it to -1), the same level training pads with. The
  counts are recorded in ``Volume.meta["nonfinite"]`` and the value in ``meta["nan_fill"]``.
- **+inf / -inf are refused** (``non_finite_values``): an infinity is an arithmetic accident (a division by
  zero, an overflow), not a measurement, and any value put in its place (the largest finite value, say)
  would plant a voxel nobody measured. The detail counts them; fix the file (e.g. ``numpy.nan_to_num``).
- **A volume without a single finite voxel is refused** (``non_finite_values``): there is nothing to read.
- **Measured k-space** (fastMRI HDF5) with any non-finite sample is refused: a k-space sample is not a voxel,
  and through the inverse FFT one bad sample spoils its whole slice.

``medrecon prepare`` counts non-finite voxels of NIfTI files while it already streams their data (see
``medrecon.io.nifti.inspect_nifti``) and records them in the manifest; DICOM pixels are integers (float pixel
data is ``unsupported``) with finite rescale values, so they cannot hold non-finite values. Outputs: a
reconstruction that is not finite is never written (``NonFiniteOutput``; the item fails with
``non_finite_output``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medrecon.io.errors import Reason, RejectedInput

NON_FINITE_OUTPUT = "non_finite_output"  # run-record / report reason of an output refused by require_finite


@dataclass(frozen=True)
class NonFinite:
    """How many voxels of an array are NaN, +inf and -inf (counts >= 0)."""

    nan: int = 0
    posinf: int = 0
    neginf: int = 0

    @classmethod
    def count(cls, array: np.ndarray) -> NonFinite:
        """The counts of ``array`` (any real dtype; integer arrays are all finite and cost nothing)."""
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all()):
            return cls()
        return cls(
            nan=int(np.count_nonzero(np.isnan(array))),
            posinf=int(np.count_nonzero(np.isposinf(array))),
            neginf=int(np.count_nonzero(np.isneginf(array))),
        )

    @property
    def total(self) -> int:
        return self.nan + self.posinf + self.neginf

    @property
    def inf(self) -> int:
        return self.posinf + self.neginf

    def __add__(self, other: NonFinite) -> NonFinite:
        return NonFinite(self.nan + other.nan, self.posinf + other.posinf, self.neginf + other.neginf)

    def swapped_signs(self) -> NonFinite:
        """The counts after multiplying by a negative number (+inf and -inf trade places)."""
        return NonFinite(self.nan, self.neginf, self.posinf)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> NonFinite:
        """Parse ``{"nan": n, "posinf": n, "neginf": n}`` (missing keys are 0); ``ValueError`` otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"non-finite counts must be an object, got {data!r}")
        values = {k: data.get(k, 0) for k in ("nan", "posinf", "neginf")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise ValueError(f"non-finite counts must be whole numbers >= 0, got {data!r}")
        return cls(**values)

    def describe(self) -> str:
        """``"3 NaN, 1 +inf"`` (only the non-zero kinds); ``"none"`` when all counts are 0."""
        parts = [(self.nan, "NaN"), (self.posinf, "+inf"), (self.neginf, "-inf")]
        return ", ".join(f"{n} {name}" for n, name in parts if n) or "none"


def check_counts(counts: NonFinite, size: int) -> None:
    """Refuse what the policy refuses: any +/-inf, or no finite voxel among ``size``.

    Raises:
        RejectedInput: ``non_finite_values`` with the counts in the detail.
    """
    if counts.inf:
        raise RejectedInput(
            Reason.NON_FINITE_VALUES,
            f"{counts.describe()} voxel(s) of {size}: an infinity is not a measurement and medrecon does not "
            "guess a value for it (replace it in the file, e.g. with numpy.nan_to_num)",
        )
    if size > 0 and counts.nan >= size:
        raise RejectedInput(Reason.NON_FINITE_VALUES, f"all {size} voxels are NaN: the volume holds no data")


def background_value(array: np.ndarray) -> float:
    """The smallest finite value of ``array`` (the value NaN voxels become); ValueError when none is finite."""
    finite = np.asarray(array)[np.isfinite(array)]
    if finite.size == 0:
        raise ValueError("the array has no finite value")
    return float(finite.min())


def fill_nan(array: np.ndarray) -> tuple[np.ndarray, float | None]:
    """``array`` with NaN voxels set to :func:`background_value` (in place for a writable float array).

    Returns:
        ``(array, value)``; ``value`` is ``None`` when there was no NaN (the array is returned unchanged).
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return array, None
    missing = np.isnan(array)
    if not missing.any():
        return array, None
    value = background_value(array)
    if not array.flags.writeable:
        array = array.copy()
    array[missing] = value
    return array, value


def apply_policy(array: np.ndarray, *, keep_nan: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the module's policy to a volume's voxels.

    Args:
        array: ``(I, J, K)`` voxel values (float32 from every reader).
        keep_nan: count and check, but leave NaN voxels in place (for a caller that must know where the data
            is missing, such as evaluation, which scores finite ground truth only).

    Returns:
        ``(array, meta)`` with ``meta = {"nonfinite": {"nan", "posinf", "neginf"}}`` plus ``"nan_fill"`` (the
        background value) when NaN voxels were replaced: the entries ``load_item`` adds to ``Volume.meta``.

    Raises:
        RejectedInput: ``non_finite_values`` (any +/-inf, or no finite voxel).
    """
    counts = NonFinite.count(array)
    check_counts(counts, int(np.asarray(array).size))
    meta: dict[str, Any] = {"nonfinite": counts.to_dict()}
    if counts.nan and not keep_nan:
        array, value = fill_nan(array)
        meta["nan_fill"] = value
    return array, meta


class NonFiniteOutput(ValueError):
    """A result that holds NaN or inf and must not be written (reason code ``non_finite_output``)."""

    reason = NON_FINITE_OUTPUT


def require_finite(array: Any, what: str) -> None:
    """Raise :class:`NonFiniteOutput` naming ``what`` and the counts when ``array`` is not all finite.

    Args:
        array: a numpy array or torch tensor.
        what: what the array is, for the message (``"the bicubic reconstruction"``).
    """
    values = array.detach().float().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    counts = NonFinite.count(values)
    if counts.total:
        raise NonFiniteOutput(
            f"{what} holds {counts.describe()} voxel(s) of {values.size}; it is not written"
        )
