"""Splitting a reconstruction over ``torchrun`` ranks: disjoint shares by id, one barrier at the end.

Every rank discovers the same item list, sorts the ids and takes every ``WORLD_SIZE``-th one starting at its
``RANK``: the shares are disjoint, cover everything, are balanced to one item, and do not depend on the order
the archive was walked in. Each rank appends its records to ``run.rank<k>.jsonl``; after a barrier rank 0
merges them into ``run.jsonl``. The barrier uses a gloo process group with a long timeout (ranks with unequal
shares may finish hours apart), whatever device the reconstruction runs on. The launcher's variables are read
by ``medrecon.distributed.env_from_environ`` (torchrun, or SLURM through submitit).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import torch.distributed as dist

from medrecon.distributed import DistEnv, barrier, env_from_environ

_BARRIER_TIMEOUT = datetime.timedelta(days=2)

__all__ = ["DistEnv", "barrier", "env_from_environ", "select_ids", "start", "stop"]


def select_ids(ids: Sequence[str], env: DistEnv) -> set[str]:
    """The ids of rank ``env.rank``: every ``world_size``-th of the sorted unique ids, from ``rank``."""
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"RANK={env.rank} and WORLD_SIZE={env.world_size} do not describe a valid rank")
    return set(sorted(set(ids))[env.rank :: env.world_size])


def start(env: DistEnv) -> bool:
    """Join a gloo process group when the job has several ranks; returns whether this call created it."""
    if not env.distributed or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size, timeout=_BARRIER_TIMEOUT)
    return True


def stop(created: bool) -> None:
    """Leave the process group if :func:`start` created it."""
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
