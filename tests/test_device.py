"""The device and network-precision options shared by reconstruct and evaluate."""

from __future__ import annotations

import pytest
import torch

from medrecon.device import network_autocast, resolve_precision
from medrecon.errors import UsageError


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision(" BF16 ", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    with pytest.raises(UsageError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_network_autocast_runs_matrix_products_in_bf16_only_when_asked():
    a = torch.randn(4, 4)
    with network_autocast("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    with network_autocast("fp32", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


def test_process_device_gives_cuda_an_index(monkeypatch):
    """``torch.cuda.set_device`` refuses an index-less ``cuda`` (seen on torch 2.11 with an H200): the
    process device must carry an index, and distributed ranks take their LOCAL_RANK."""
    from medrecon.distributed import DistEnv, process_device

    chosen = []

    def set_device(device):
        if device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index, got {device}")
        chosen.append(device)

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert process_device(torch.device("cuda"), DistEnv(rank=0, world_size=1, local_rank=0)) == torch.device(
        "cuda", 0
    )
    assert process_device(torch.device("cuda"), DistEnv(rank=3, world_size=4, local_rank=1)) == torch.device(
        "cuda", 1
    )
    assert process_device(torch.device("cpu"), DistEnv(rank=0, world_size=1, local_rank=0)).type == "cpu"
    assert chosen == [torch.device("cuda", 0), torch.device("cuda", 1)]
