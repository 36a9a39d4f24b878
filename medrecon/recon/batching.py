"""Batch sizes chosen from free accelerator memory (``batch_size=auto``).

The engine measures what one more unit costs on the device with its first two batches of a shape (1 unit, then
2; their results are kept: no work is thrown away), then fills a fraction of the free memory. On the CPU memory
is not what limits throughput, so ``auto`` keeps a fixed size there (:data:`CPU_BATCH`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Slices per batch on the CPU with ``batch_size=auto`` (beyond a few slices CPU throughput is flat).
CPU_BATCH = 16
#: Fraction of the free device memory a batch may fill (the rest: fragmentation, the writer, other kernels).
MEMORY_FRACTION = 0.8
#: Largest automatic batch (beyond it, throughput no longer grows and latency per item does).
MAX_AUTO_BATCH = 256


@dataclass(frozen=True)
class MemoryProbe:
    """Peak device memory of two probe batches, in bytes above what was allocated before each.

    Attributes:
        peak_one: peak extra bytes of a batch of 1 unit (>= 0).
        peak_two: peak extra bytes of a batch of 2 units (>= 0).
        available: bytes a batch may use now: the driver's free memory plus what torch holds cached but unused.
    """

    peak_one: int
    peak_two: int
    available: int


def batch_from_memory(
    probe: MemoryProbe, fraction: float = MEMORY_FRACTION, cap: int = MAX_AUTO_BATCH
) -> int:
    """The largest batch whose predicted peak fits ``fraction`` of the available memory, in [1, cap].

    Peak memory is modelled as ``fixed + n * per_unit`` with ``per_unit = peak_two - peak_one`` (at least 1 byte)
    and ``fixed = peak_one - per_unit``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    per_unit = max(int(probe.peak_two) - int(probe.peak_one), 1)
    fixed = max(int(probe.peak_one) - per_unit, 0)
    budget = fraction * max(int(probe.available), 0) - fixed
    return int(min(max(budget // per_unit, 1), cap))


def available_memory(device: torch.device) -> int:
    """Bytes a new batch may use on a CUDA ``device``: free memory plus torch's cached but unused blocks."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


class PeakMemory:
    """Context manager: the peak CUDA memory allocated inside it, above what was allocated on entry (``.bytes``)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bytes = device, 0

    def __enter__(self) -> PeakMemory:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.bytes = max(int(torch.cuda.max_memory_allocated(self.device)) - self._base, 0)
