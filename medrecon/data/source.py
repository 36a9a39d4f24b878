"""Where training volumes come from: manifest records, split selection and a bounded LRU cache of volumes.

Volumes are loaded lazily (``medrecon.io.archive.load_item``) the first time a sample needs them and kept in a
least-recently-used cache of ``capacity`` encoded volumes per process (each DataLoader worker has its own).

Non-finite voxels: ``load_item`` applies ``medrecon.io.finite`` (NaN -> the volume's background value, +/-inf
refused), and the cache checks every encoded volume once more, so no non-finite value reaches a sample.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.data.encoder import Encoder

log = logging.getLogger(__name__)


def _usage_error(message: str) -> Exception:
    from medrecon.errors import UsageError

    return UsageError(message)


def read_records(manifest: str | Path) -> list[Any]:
    """All records of a manifest file (``medrecon.manifest.read_manifest``), with user-facing errors.

    Raises:
        UsageError: the file is missing, unreadable, not a valid manifest, or holds no records.
    """
    from medrecon.manifest import read_manifest

    path = Path(manifest)
    if not path.is_file():
        raise _usage_error(f"manifest={manifest} does not exist (write one with 'medrecon prepare')")
    try:
        records = list(read_manifest(path))
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise _usage_error(f"manifest={manifest} is not a valid medrecon manifest: {err}") from err
    if not records:
        raise _usage_error(f"manifest={manifest} holds no records")
    return records


def select_records(records: Sequence[Any], split: str | None, *, manifest: str | Path = "") -> list[Any]:
    """Records with ``status == "ok"`` in ``split`` (all ok records when ``split`` is None), in manifest
    order.

    Raises:
        UsageError: none match (the message counts records per split and status, never ids).
    """
    ok = [r for r in records if getattr(r, "status", "ok") == "ok"]
    chosen = ok if split is None else [r for r in ok if getattr(r, "split", None) == split]
    if not chosen:
        counts: dict[str, int] = {}
        for r in records:
            key = f"{getattr(r, 'split', None)}/{getattr(r, 'status', None)}"
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        where = "any split" if split is None else f"split {split!r}"
        raise _usage_error(
            f"manifest {manifest} has no records with status 'ok' in {where} (split/status counts: {summary})"
        )
    return chosen


def load_array(record: Any) -> np.ndarray:
    """The record's voxel array ``(I, J, K)`` float32 in scanner units."""
    from medrecon.io.archive import load_item
    from medrecon.io.errors import RejectedInput

    try:
        volume = load_item(record)
    except RejectedInput as err:  # the archive changed since prepare
        raise _usage_error(f"record {getattr(record, 'id', '?')} cannot be read now: {err}") from err
    array = np.asarray(volume.array, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(
            f"record {getattr(record, 'id', '?')}: training needs 3D volumes, got shape {array.shape}"
        )
    nan = int(volume.meta.get("nonfinite", {}).get("nan", 0))
    if nan:
        log.info(
            "record %s: %d NaN voxel(s) read as the background value %g",
            getattr(record, "id", "?"),
            nan,
            volume.meta["nan_fill"],
        )
    return array


class VolumeCache:
    """Encoded volumes ``(I, J, K)`` float32 in [-1, 1], loaded on first use, at most ``capacity`` kept.

    Args:
        records: manifest records (indexable; ``get(i)`` loads ``records[i]``).
        encoder: a global encoder, or a per-volume one that is re-fitted on each volume as it loads.
        capacity: how many encoded volumes to keep (>= 1).
    """

    def __init__(self, records: Sequence[Any], encoder: Encoder, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"data.cache_volumes must be >= 1, got {capacity}")
        self.records = list(records)
        self.encoder = encoder
        self.capacity = int(capacity)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.loads = 0  # how many times a volume was read from disk (tests and logs)

    def __len__(self) -> int:
        return len(self.records)

    def get(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        raw = load_array(self.records[index])
        encoder = self.encoder.for_volume(raw)
        encoded = encoder.encode(raw)
        if not np.isfinite(encoded).all():  # load_item's policy makes raw finite: only the encoder is left
            raise ValueError(
                f"record {getattr(self.records[index], 'id', '?')}: encoding gave non-finite values (encoder "
                f"low {encoder.low}, high {encoder.high}); check data.encoder"
            )
        self.loads += 1
        self._cache[index] = encoded
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return encoded

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state
