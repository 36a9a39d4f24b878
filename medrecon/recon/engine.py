"""Batched reconstruction of units (slices) from many items, with failures confined to the item they belong
to.

Items are submitted as :class:`Job` records (all units of one item for one method). Units wait in buckets
keyed by method and shape (slices of different sizes cannot share a batch); a bucket runs as soon as it holds
``batch_size`` units, so one batch may mix the last slices of one volume with the first of the next, and the
rest run at :meth:`Engine.flush`. When a job's last unit is back, ``on_done(job, mean, std)`` gets its stacked
results; when anything about a job fails, ``on_fail(job, reason, detail)`` is called once and its other units
are dropped.

Failure rules:

- CUDA out of memory on a batch: the batch is split in halves and each is retried (and ``batch_size`` is
  lowered for the rest of the run); a single unit that still does not fit fails its item (``out_of_memory``).
- Any other error in a batch holding several items: every item is retried alone, so only the item that causes
  the error fails (reason ``error``, the exception type and message as detail).
- An error raised by ``on_done`` (writing outputs) fails that item: a ``RejectedInput`` with its reason,
  anything else with ``error``.

Results are computed on the method's device and kept on the CPU until their item is complete.

Keeping an accelerator busy (docs/usage.md, "Throughput"):

- ``static_shapes``: every batch is padded to ``batch_size`` units (the last unit repeated, its extra results
  dropped), so a compiled network (``compile=true``) sees one shape per bucket and never recompiles for the
  last, shorter batch; CUDA graphs need the same. Each unit's noise comes from its own seed, so padding does not
  change any unit's result.
- ``auto_batch``: on CUDA the first batches of each shape run with 1 and then 2 units while their peak memory
  is measured, and ``batch_size`` becomes what fits the free memory (``medrecon.recon.batching``); the OOM rule
  above still guards the estimate. On other devices ``batch_size`` is kept.
- ``write_threads``: ``on_done`` (writing NIfTI/DICOM, compressing) runs on a background thread while the next
  batches compute; at most ``2 * write_threads`` finished items wait, and :meth:`Engine.flush` returns only
  when everything is written. ``on_done`` and ``on_fail`` never run concurrently with each other (a ledger
  needs no lock of its own); ``on_batch`` runs on the calling thread and may overlap a write (tqdm is
  thread-safe).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from medrecon.io.errors import RejectedInput
from medrecon.physics.base import Measurement
from medrecon.recon.measure import cat_measurements

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out_of_memory"
ERROR = "error"


@dataclass(eq=False)
class Job:
    """All units of one item for one method.

    Attributes:
        key: unique name of the job (the item id, or ``id/method``); used in logs.
        method: the key of the method in the engine's ``methods``.
        meas: ``N`` measurements (CPU or device).
        seeds: one seed per unit.
        cond: precomputed 2.5D conditions ``(N, C, *S)`` or ``None``.
        context: anything the caller needs back in ``on_done`` (volume, encoder, paths, ...).
    """

    key: str
    method: str
    meas: Measurement
    seeds: list[int]
    cond: Tensor | None = None
    context: Any = None
    means: dict[int, Tensor] = field(default_factory=dict)
    stds: dict[int, Tensor] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)
    failed: bool = False
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return int(self.meas.y.shape[0])

    @property
    def blend_weight(self) -> float | None:
        """The mean weight of the model's output over the units, for a blended method
        (``medrecon.recon.blend``: ``last_weights`` after each call); ``None`` otherwise."""
        return sum(self.weights.values()) / len(self.weights) if self.weights else None


Entry = tuple[Job, int]  # (job, unit index)


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an accelerator out-of-memory error."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def describe(err: BaseException) -> str:
    """A one-line description of an exception (type and first line of its message)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {message}"[:300] if message else type(err).__name__


class Engine:
    """Runs jobs' units in batches through ``methods[job.method]`` (see the module docstring).

    Args:
        methods: name -> callable ``(meas, cond, seeds) -> (mean, std | None)``.
        batch_size: units per batch (>= 1).
        device: where the methods run.
        on_done: called with ``(job, mean (N, 1, *S) CPU, std or None)`` when a job is complete.
        on_fail: called once with ``(job, reason, detail)`` when a job fails.
        on_batch: called with the number of units of every finished batch (progress bars).
        static_shapes: pad every batch to ``batch_size`` units (compiled networks, CUDA graphs).
        auto_batch: size batches from free CUDA memory (see the module docstring).
        write_threads: background threads for ``on_done`` (0 = call it inline).
    """

    def __init__(
        self,
        methods: dict[str, Callable[..., tuple[Tensor, Tensor | None]]],
        batch_size: int,
        device: torch.device,
        on_done: Callable[[Job, Tensor, Tensor | None], None],
        on_fail: Callable[[Job, str, str], None],
        on_batch: Callable[[int], None] | None = None,
        static_shapes: bool = False,
        write_threads: int = 0,
        auto_batch: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(write_threads, bool) or not isinstance(write_threads, int) or write_threads < 0:
            raise ValueError(f"write_threads must be an integer >= 0, got {write_threads!r}")
        self.methods, self.batch_size, self.device = methods, batch_size, device
        self.on_done, self.on_fail, self.on_batch = on_done, on_fail, on_batch
        self.static_shapes = bool(static_shapes)
        self.auto_batch = bool(auto_batch) and device.type == "cuda"
        self._probed: set[tuple] = set()
        self.buckets: OrderedDict[tuple, list[Entry]] = OrderedDict()
        self._callbacks = threading.RLock()  # on_done and on_fail never overlap (see the module docstring)
        self._writer = (
            ThreadPoolExecutor(max_workers=write_threads, thread_name_prefix="medrecon-write")
            if write_threads
            else None
        )
        self._max_pending = 2 * write_threads
        self._pending: deque[Future] = deque()

    # -- submission ------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job's units; runs every bucket that is full."""
        if job.method not in self.methods:
            raise ValueError(f"job {job.key}: unknown method {job.method!r}; have {sorted(self.methods)}")
        if job.count == 0:
            self._finish(job)
            return
        cond_shape = None if job.cond is None else tuple(job.cond.shape[1:])
        key = (job.method, tuple(job.meas.y.shape[1:]), job.meas.y.dtype, cond_shape)
        bucket = self.buckets.setdefault(key, [])
        bucket.extend((job, n) for n in range(job.count))
        if self.auto_batch and key not in self._probed and len(bucket) >= 3:
            self._probe(key, bucket)
        while len(bucket) >= self.batch_size:
            batch, bucket[:] = bucket[: self.batch_size], bucket[self.batch_size :]
            self._run(batch)

    def flush(self) -> None:
        """Run everything still waiting and wait until every finished item is written."""
        for key in list(self.buckets):
            bucket = self.buckets.pop(key)
            while bucket:
                batch, bucket = bucket[: self.batch_size], bucket[self.batch_size :]
                self._run(batch)
        self._drain(0)

    def close(self) -> None:
        """:meth:`flush`, then :meth:`stop`."""
        self.flush()
        self.stop()

    def stop(self) -> None:
        """Finish the writes already started and stop the writer threads; units still waiting are not run
        (after an interruption: what was computed is written whole, nothing is half-written)."""
        if self._writer is not None:
            self._drain(0)
            self._writer.shutdown(wait=True)
            self._writer = None

    def _probe(self, key: tuple, bucket: list[Entry]) -> None:
        """Run 1, then 2 units of a new shape measuring peak memory; size batches from free memory."""
        from medrecon.recon.batching import MemoryProbe, PeakMemory, available_memory, batch_from_memory

        self._probed.add(key)
        one, two = bucket[:1], bucket[1:3]
        bucket[:] = bucket[3:]
        with PeakMemory(self.device) as peak_one:
            self._run(one)
        with PeakMemory(self.device) as peak_two:
            self._run(two)
        if peak_one.bytes == 0 or peak_two.bytes == 0:  # a probe failed or ran elsewhere: keep the size
            return
        probe = MemoryProbe(peak_one.bytes, peak_two.bytes, available_memory(self.device))
        size = batch_from_memory(probe)
        log.info(
            "batch_size=auto: %d units per batch (%.1f MiB per unit, %.0f MiB free) for %s",
            size,
            (probe.peak_two - probe.peak_one) / 2**20,
            probe.available / 2**20,
            key[0],
        )
        self.batch_size = size

    def _drain(self, keep: int) -> None:
        """Wait for background writes until at most ``keep`` are pending."""
        while len(self._pending) > keep:
            self._pending.popleft().result()  # _finish_now never raises: failures go to on_fail

    # -- running ---------------------------------------------------------------------------------------------
    def _run(self, batch: list[Entry]) -> None:
        batch = [e for e in batch if not e[0].failed]
        if not batch:
            return
        try:
            mean, std, weights = self._call(batch)
        except Exception as err:  # noqa: BLE001 - any failure is confined to the items of this batch
            self._recover(batch, err)
            return
        for row, (job, n) in enumerate(batch):
            job.means[n] = mean[row]
            if std is not None:
                job.stds[n] = std[row]
            if weights is not None:
                job.weights[n] = float(weights[row])
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for job in dict.fromkeys(job for job, _ in batch):
            if not job.failed and len(job.means) == job.count:
                self._finish(job)

    def _call(self, batch: list[Entry]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The method on one batch: ``(mean, std, weights)`` for its units; ``weights`` the blend weights of a
        blended method (its ``last_weights``), else ``None``."""
        start = time.perf_counter()
        method = self.methods[batch[0][0].method]
        units = list(batch)
        if self.static_shapes and len(units) < self.batch_size:
            units += [units[-1]] * (
                self.batch_size - len(units)
            )  # one shape per bucket; extras dropped below
        meas = cat_measurements([job.meas.index([n]) for job, n in units]).to(self.device)
        conds = [job.cond[n : n + 1] for job, n in units if job.cond is not None]
        cond = torch.cat(conds).to(self.device) if conds else None
        seeds = [job.seeds[n] for job, n in units]
        mean, std = method(meas, cond, seeds)
        mean = mean.detach()[: len(batch)].to("cpu")
        std = None if std is None else std.detach()[: len(batch)].to("cpu")
        weights = getattr(method, "last_weights", None)
        weights = None if weights is None else weights[: len(batch)]
        elapsed = time.perf_counter() - start
        for job, _ in batch:  # time shared out by units
            job.seconds += elapsed / len(batch)
        return mean, std, weights

    def _recover(self, batch: list[Entry], err: Exception) -> None:
        jobs = list(dict.fromkeys(job for job, _ in batch))
        if is_oom(err):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) > 1:
                half = len(batch) // 2
                self.batch_size = max(1, min(self.batch_size, half))
                log.warning(
                    "out of memory on a batch of %d units; retrying in halves (batch_size=%d from now)",
                    len(batch),
                    self.batch_size,
                )
                self._run(batch[:half])
                self._run(batch[half:])
                return
            for job in jobs:
                self._fail(job, OUT_OF_MEMORY, "a single unit does not fit in the device's memory")
            return
        if len(jobs) > 1:  # find the culprit: each item alone
            for job in jobs:
                mine = [e for e in batch if e[0] is job]
                for start in range(0, len(mine), self.batch_size):
                    self._run(mine[start : start + self.batch_size])
            return
        log.debug("job %s failed", jobs[0].key, exc_info=err)
        self._fail(jobs[0], ERROR, describe(err))

    def _finish(self, job: Job) -> None:
        if job.count:
            mean = torch.stack([job.means[n] for n in range(job.count)])
            std = torch.stack([job.stds[n] for n in range(job.count)]) if job.stds else None
        else:
            mean, std = torch.empty(0), None
        job.means, job.stds = {}, {}
        if self._writer is None:
            self._finish_now(job, mean, std)
            return
        self._drain(self._max_pending - 1)  # bounded memory: finished volumes wait for at most 2 x threads
        self._pending.append(self._writer.submit(self._finish_now, job, mean, std))

    def _finish_now(self, job: Job, mean: Tensor, std: Tensor | None) -> None:
        with self._callbacks:
            try:
                self.on_done(job, mean, std)
            except RejectedInput as err:  # an input problem only writing shows (e.g. its header read again)
                self._fail(job, err.reason.value, err.detail)
            except Exception as err:  # noqa: BLE001 - writing one item's outputs must not stop the others
                log.debug("finishing job %s failed", job.key, exc_info=err)
                self._fail(job, ERROR, describe(err))

    def _fail(self, job: Job, reason: str, detail: str) -> None:
        with self._callbacks:
            if job.failed:
                return
            job.failed = True
            job.means, job.stds, job.weights = {}, {}, {}
            self.on_fail(job, reason, detail)
