"""Several processes under ``torchrun`` (or SLURM through submitit), for training and for reconstruction:
read the launcher's environment, pick each process's device, start and stop the process group.

``torchrun --nproc_per_node=N -m medrecon.cli train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` for every process; without them training runs as a single process. The
backend is NCCL on GPUs and gloo on CPUs; each process of a GPU run uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ() -> DistEnv:
    """The ``torchrun`` variables (defaults: a single process).

    Under SLURM with several tasks and no ``torchrun`` (Hydra's submitit launcher with ``tasks_per_node >
    1``), submitit's ``TorchDistributedEnvironment`` exports the same variables from SLURM's.
    """
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        try:
            from submitit.helpers import TorchDistributedEnvironment
        except ImportError:  # not under submitit: leave SLURM's variables alone
            pass
        else:
            TorchDistributedEnvironment().export()
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def process_device(device: torch.device, env: DistEnv) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a distributed GPU run, else ``device`` with its
    index filled in (``cuda`` -> ``cuda:<current device>``; ``torch.cuda.set_device`` refuses a bare ``cuda``)."""
    if device.type == "cuda" and env.distributed:
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA, gloo for CPU) when the job has more than one process."""
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        accepts_device = "device_id" in inspect.signature(dist.init_process_group).parameters
        kwargs = {"device_id": device} if device.type == "cuda" and accepts_device else {}
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, **kwargs)


def barrier(env: DistEnv) -> None:
    """Wait until every rank got here (a no-op for a single process). Call it where all ranks arrive on the
    normal path before leaving the group: a rank that tears its connections down while another still finishes
    its last checkpoint can make gloo abort the slower one."""
    if env.distributed and dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over all processes (``value`` itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def any_process(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (a collective: every process must call it)."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


def quiet_non_main(rank: int) -> None:
    """Ranks other than 0 write no log file and show warnings and errors only (rank 0 speaks for the job)."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)
