"""An endless, seeded, rank-sharded, resumable sampler of ``(item, sample_seed)`` keys.

Epoch ``e`` is a fixed function of ``(seed, e)``: a permutation of the items (uniform) or ``len(items)`` draws
with replacement proportional to ``weights`` (foreground weighting, which ``DistributedSampler`` cannot do).
As ``torch.utils.data.DistributedSampler`` does, the epoch is padded to a multiple of ``world_size`` and rank
``r`` takes every ``world_size``-th entry from ``r``. Each key carries its own seed for the sample's random
crop and augmentation. ``start`` skips the keys this rank already consumed, so a resumed run sees exactly the
samples the interrupted one would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(item, sample_seed)`` forever.

    Args:
        num_items: dataset length (> 0).
        weights: optional non-negative ``(num_items,)`` sampling weights.
        seed: the run seed.
        rank, world_size: this process's shard.
        start: number of keys this rank has already consumed.
    """

    def __init__(
        self,
        num_items: int,
        weights: np.ndarray | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if num_items <= 0:
            raise ValueError(f"the sampler needs at least one item, got {num_items}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (num_items,) or not np.all(np.isfinite(weights)) or weights.min() < 0:
                raise ValueError(f"sampling weights must be {num_items} finite non-negative numbers")
            if weights.sum() <= 0:
                raise ValueError("sampling weights sum to zero")
            weights = weights / weights.sum()
        self.num_items, self.weights = int(num_items), weights
        self.seed, self.rank, self.world_size, self.start = int(seed), int(rank), int(world_size), int(start)
        self.per_rank = -(-self.num_items // self.world_size)  # ceil: the epoch padded to a multiple of ranks

    def epoch_items(self, epoch: int) -> np.ndarray:
        """This rank's items of ``epoch``, ``(per_rank,)`` int64."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is None:
            items = rng.permutation(self.num_items)
        else:
            items = rng.choice(self.num_items, size=self.num_items, p=self.weights)
        padded = np.resize(
            items, self.per_rank * self.world_size
        )  # repeats from the start, like DistributedSampler
        return padded[self.rank :: self.world_size]

    def key_seed(self, position: int) -> int:
        """The per-sample seed of this rank's ``position``-th key (a 63-bit int)."""
        state = np.random.SeedSequence([self.seed, self.rank, position]).generate_state(2, dtype=np.uint32)
        return int(state[0]) << 31 | int(state[1] >> 1)

    def item_at(self, position: int) -> int:
        """The item of this rank's ``position``-th key (what ``__iter__`` yields there)."""
        epoch, offset = divmod(int(position), self.per_rank)
        return int(self.epoch_items(epoch)[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        while True:
            epoch, offset = divmod(position, self.per_rank)
            items = self.epoch_items(epoch)
            for item in items[offset:]:
                yield int(item), self.key_seed(position)
                position += 1
