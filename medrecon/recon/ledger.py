"""``run.jsonl``: one record per reconstructed item, the bookkeeping that makes a run resumable.

While a run is going each process *appends* one JSON line per finished item (written and flushed only after
the item's outputs are in place), so a killed run leaves a valid prefix: items without a finished line are
redone on the next run, and a torn last line is ignored when reading. At the end the file is *rewritten
atomically* with exactly one record per item (the newest wins), this run's items first in input order, then
records of earlier runs for items this run did not see.

With ``torchrun`` (``WORLD_SIZE > 1``) rank ``k`` appends to ``run.rank<k>.jsonl`` instead, and rank 0 merges
every rank file into ``run.jsonl`` after the ranks have met at a barrier (see :mod:`medrecon.recon.sharding`);
left-over rank files of a killed run are read as well, so nothing finished is lost.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medrecon.io.atomic import atomic_write_text
from medrecon.io.finite import NonFinite

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("ok", "failed", "skipped")
LEDGER_NAME = "run.jsonl"


@dataclass
class RunRecord:
    """The outcome of one item.

    Attributes:
        id: the item's opaque id (the output name stem).
        input: the source file paths the item was read from.
        status: ``ok`` (reconstructed now), ``skipped`` (outputs of an earlier ok run kept) or ``failed``.
        reason: a stable reason code for ``failed`` items (``medrecon.io.errors.Reason`` values, ``error``,
            ``out_of_memory``, ``not_applicable``), a short note for ``skipped`` ones, else ``None``.
        outputs: output paths relative to the output folder.
        seconds: wall time spent on the item in this run.
        detail: a human sentence about a failure, or about what was done to the input of an ok item (NaN
            voxels read as the background value); no patient data.
        method: what reconstructed the item: ``diffusion`` (the checkpoint's sampler), ``regression`` (a
            regression checkpoint's one evaluation) or a baseline's name; ``""`` in ledgers written before it.
        settings: a short hash of the options that shape the result (method, checkpoint, sampler, seed, ...):
            a finished item is only skipped by a rerun with the same settings.
        nonfinite: the input's NaN/+inf/-inf voxel counts as read (``medrecon.io.finite``: NaN voxels were
            replaced by the background value), ``None`` when the input was not read in this run.
        blend_weight: for a blended reconstruction (``blend=``, ``medrecon.recon.blend``) the mean weight of
            the model's output over the item's slices (1 = the model alone, 0 = the classical partner alone);
            ``None`` otherwise.
    """

    id: str
    input: list[str]
    status: str
    reason: str | None = None
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""
    method: str = ""
    settings: str = ""
    nonfinite: NonFinite | None = None
    blend_weight: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"run record status {self.status!r} is not one of {STATUSES}")

    @property
    def done(self) -> bool:
        """Finished successfully in some run (``ok`` now or ``skipped`` because it was ok before)."""
        return self.status in ("ok", "skipped")

    def to_json(self) -> str:
        data = asdict(self)
        data["seconds"] = round(float(self.seconds), 3)
        if self.blend_weight is not None:
            data["blend_weight"] = round(float(self.blend_weight), 4)
        return json.dumps(data, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        return cls(
            id=str(data["id"]),
            input=[str(p) for p in data.get("input") or []],
            status=str(data["status"]),
            reason=data.get("reason"),
            outputs=[str(p) for p in data.get("outputs") or []],
            seconds=float(data.get("seconds") or 0.0),
            detail=str(data.get("detail") or ""),
            method=str(data.get("method") or ""),
            settings=str(data.get("settings") or ""),
            nonfinite=_nonfinite(data.get("nonfinite")),
            blend_weight=_weight(data.get("blend_weight")),
        )


def _weight(value: object) -> float | None:
    """A blend weight from a record; ``None`` when absent or not a number in [0, 1]."""
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return weight if 0.0 <= weight <= 1.0 else None


def _nonfinite(value: object) -> NonFinite | None:
    """Counts from a record; ``None`` when absent (older ledgers) or not valid counts."""
    try:
        return None if value is None else NonFinite.from_dict(value)
    except ValueError:
        return None


def read_records(path: Path) -> list[RunRecord]:
    """The parseable records of a JSONL ledger in file order (``[]`` when missing; torn lines skipped)."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(RunRecord.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            log.warning(
                "%s line %d is not a complete run record (an interrupted write?); ignored", path.name, number
            )
    return records


def latest_by_id(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """The newest record of each id (later records win), in first-seen order."""
    latest: dict[str, RunRecord] = {}
    for record in records:
        latest[record.id] = record
    return latest


def rank_ledgers(out: Path) -> list[Path]:
    """Per-rank ledgers ``run.rank<k>.jsonl`` present in ``out``, by rank."""
    found = []
    for path in out.glob("run.rank*.jsonl"):
        stem = path.name[len("run.rank") : -len(".jsonl")]
        if stem.isdigit():
            found.append((int(stem), path))
    return [p for _, p in sorted(found)]


def previous_records(out: Path) -> dict[str, RunRecord]:
    """What earlier (possibly killed) runs finished: ``run.jsonl`` then any left-over rank ledgers."""
    records = read_records(out / LEDGER_NAME)
    for path in rank_ledgers(out):
        records += read_records(path)
    return latest_by_id(records)


class RunLedger:
    """Appends this process's records as items finish; :meth:`finalize` writes the merged ``run.jsonl``.

    Args:
        out: the output folder.
        rank, world_size: this process's place in a ``torchrun`` job (``0, 1`` when alone).
    """

    def __init__(self, out: Path, rank: int = 0, world_size: int = 1) -> None:
        self.out = Path(out)
        self.rank, self.world_size = rank, world_size
        name = LEDGER_NAME if world_size == 1 else f"run.rank{rank}.jsonl"
        self.path = self.out / name
        self.records: dict[str, RunRecord] = {}

    def append(self, record: RunRecord) -> None:
        """Record a finished item: one flushed, fsynced line (a kill loses at most this line)."""
        self.records[record.id] = record
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(record.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def finalize(self, order: list[str]) -> list[RunRecord]:
        """Merge earlier records and every rank's records into ``run.jsonl`` atomically (rank 0 only).

        Args:
            order: the ids of this run's items in input order (all ranks), which come first in the file.

        Returns:
            The merged records as written (other ranks return their own records and write nothing).
        """
        if self.rank != 0:
            return list(self.records.values())
        rank_files = rank_ledgers(self.out)
        merged = previous_records(self.out)  # run.jsonl, then the rank files (this run's, newest)
        merged.update(self.records)
        wanted = set(order)
        ordered = [merged[i] for i in order if i in merged]
        ordered += [r for i, r in merged.items() if i not in wanted]
        atomic_write_text(self.out / LEDGER_NAME, "".join(r.to_json() + "\n" for r in ordered))
        for path in rank_files:
            path.unlink(missing_ok=True)
        return ordered
