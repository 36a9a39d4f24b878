"""Intensity encoding: scanner units <-> the network's [-1, 1] range, stored with the checkpoint.

Two kinds:

- ``percentile`` (MR, arbitrary units): the ``low_pct`` / ``high_pct`` percentiles (default 0.5 / 99.5) of a
  volume map to -1 / +1.
- ``window`` (CT, Hounsfield units): a fixed HU window ``[low, high]`` (default [-1000, 1000]) maps to -1 /
  +1.

Fitting (``fit``): ``per_volume`` re-fits the percentiles on every volume it encodes (the default for MR,
whose units differ from scan to scan); ``global`` fixes one ``low``/``high`` from the training volumes and
stores them, so every volume is encoded with the same numbers. A ``window`` encoder never fits. With ``clip``
the encoded values are clipped to [-1, 1] (decoding then cannot restore values outside the window/percentile
range).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch

from medrecon.schema import Bool, Choice, Float, check_mapping

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)

KINDS: tuple[str, ...] = ("percentile", "window")
FITS: tuple[str, ...] = ("per_volume", "global")
_SCANNER_VALUE = Float(-1e12, 1e12, optional=True)
_SCHEMA = {
    "kind": Choice(KINDS),
    "fit": Choice(FITS),
    "low": _SCANNER_VALUE,
    "high": _SCANNER_VALUE,
    "low_pct": Float(0.0, 100.0),
    "high_pct": Float(0.0, 100.0),
    "clip": Bool(),
}


@dataclass(frozen=True)
class Encoder:
    """A linear map ``[low, high] -> [-1, 1]`` in scanner units.

    Attributes:
        kind: ``percentile`` or ``window``.
        fit: ``per_volume`` or ``global`` (``window`` encoders are always global).
        low, high: the scanner values that map to -1 and +1; ``None`` until fitted (percentile encoders).
        low_pct, high_pct: percentiles in [0, 100] used by ``percentile`` encoders.
        clip: clip encoded values to [-1, 1].
    """

    kind: str = "percentile"
    fit: str = "per_volume"
    low: float | None = None
    high: float | None = None
    low_pct: float = 0.5
    high_pct: float = 99.5
    clip: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"encoder kind {self.kind!r} is not one of {KINDS}")
        if self.fit not in FITS:
            raise ValueError(f"encoder fit {self.fit!r} is not one of {FITS}")
        if not 0.0 <= self.low_pct < self.high_pct <= 100.0:
            raise ValueError(
                f"encoder percentiles must satisfy 0 <= low < high <= 100, got {self.low_pct}, "
                f"{self.high_pct}"
            )
        if self.kind == "window" and (self.low is None or self.high is None):
            raise ValueError("a window encoder needs low and high (e.g. -1000 and 1000 HU)")
        if self.low is not None and self.high is not None and not self.high > self.low:
            raise ValueError(f"encoder high ({self.high}) must be greater than low ({self.low})")

    @property
    def fitted(self) -> bool:
        return self.low is not None and self.high is not None

    def fit_volume(self, array: np.ndarray) -> Encoder:
        """This encoder with ``low``/``high`` from ``array`` (percentile kind); a window is returned as is."""
        if self.kind == "window":
            return self
        arr = np.asarray(array, dtype=np.float32)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise ValueError("cannot fit an intensity encoder on a volume without finite values")
        lo, hi = (float(v) for v in np.percentile(finite, [self.low_pct, self.high_pct]))
        if not hi > lo:  # a (nearly) constant volume: fall back to its full range, then to a unit range
            lo, hi = float(finite.min()), float(finite.max())
            if not hi > lo:
                hi = lo + 1.0
        return replace(self, low=lo, high=hi)

    def fit_global(self, arrays: Iterable[np.ndarray], max_voxels: int = 2_000_000) -> Encoder:
        """A ``global`` encoder fitted on the pooled voxels of ``arrays`` (subsampled to ``max_voxels``)."""
        if self.kind == "window":
            return replace(self, fit="global")
        arrays = list(arrays)
        if not arrays:
            raise ValueError("cannot fit a global intensity encoder without volumes")
        per = max(1, max_voxels // len(arrays))
        pooled = []
        for arr in arrays:
            flat = np.asarray(arr, dtype=np.float32).ravel()
            step = max(1, flat.size // per)
            pooled.append(flat[::step])
        return replace(self.fit_volume(np.concatenate(pooled)), fit="global")

    def for_volume(self, array: np.ndarray) -> Encoder:
        """The encoder to apply to ``array``: re-fitted when ``fit == "per_volume"``, else this one."""
        if self.fit == "per_volume" and self.kind == "percentile":
            return self.fit_volume(array)
        if not self.fitted:
            raise ValueError(
                "this global encoder has not been fitted; call fit_global on the training volumes"
            )
        return self

    # ---- mapping ------------------------------------------------------------------------------------------
    def _bounds(self) -> tuple[float, float]:
        if not self.fitted:
            raise ValueError("encoder is not fitted (low/high unknown); use for_volume(array) first")
        return float(self.low), float(self.high)  # type: ignore[arg-type]

    def encode(self, x: ArrayT) -> ArrayT:
        """Scanner units -> [-1, 1] (numpy array or torch tensor; dtype float32 for numpy)."""
        lo, hi = self._bounds()
        if isinstance(x, torch.Tensor):
            y = (x.float() - lo) * (2.0 / (hi - lo)) - 1.0
            return y.clamp(-1.0, 1.0) if self.clip else y
        y = (np.asarray(x, dtype=np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
        return np.clip(y, -1.0, 1.0) if self.clip else y

    def decode(self, y: ArrayT) -> ArrayT:
        """[-1, 1] -> scanner units (the inverse of :meth:`encode` inside the range)."""
        lo, hi = self._bounds()
        if isinstance(y, torch.Tensor):
            return (y.float() + 1.0) * ((hi - lo) / 2.0) + lo
        return (np.asarray(y, dtype=np.float32) + np.float32(1.0)) * np.float32((hi - lo) / 2.0) + np.float32(
            lo
        )

    # ---- storage ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (stored in checkpoint metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Encoder:
        """The encoder :meth:`to_dict` wrote (e.g. read from a checkpoint), checked key by key.

        Raises:
            ValueError: a missing or unknown key, or a value of the wrong type or range
                (``medrecon.schema.SchemaError``), or values the constructor refuses together.
        """
        return cls(**check_mapping(data, _SCHEMA, "encoder", tuple(_SCHEMA)))


def build_encoder(cfg: Any, modality: str | None) -> Encoder:
    """The encoder described by ``data.encoder`` (``kind: auto|percentile|window``, ``fit``, ...).

    ``kind: auto`` chooses a HU window for CT and percentile scaling for everything else.
    """
    options = dict(cfg or {})
    kind = options.pop("kind", "auto")
    window = options.pop("window", None)
    if kind == "auto":
        kind = "window" if (modality or "").upper() == "CT" else "percentile"
    if kind == "window":
        low, high = window if window is not None else (-1000.0, 1000.0)
        options.update(low=float(low), high=float(high), fit="global")
    elif kind != "percentile":
        raise ValueError(f"data.encoder.kind={kind!r} is not one of auto, {', '.join(KINDS)}")
    return Encoder(kind=kind, **options)
