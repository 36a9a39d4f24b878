"""The device and network-precision options shared by reconstruct and evaluate."""

from __future__ import annotations

import pytest
import torch

from medrecon.cli import UsageError
from medrecon.device import network_autocast, resolve_precision


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
