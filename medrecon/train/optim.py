"""AdamW and the learning-rate schedule: linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    device: torch.device | None = None,
) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel when training on a GPU and this torch has it."""
    if not lr > 0:
        raise ValueError(f"train.lr must be > 0, got {lr!r}")
    kwargs = {}
    if (
        device is not None
        and device.type == "cuda"
        and "fused" in inspect.signature(torch.optim.AdamW).parameters
    ):
        kwargs["fused"] = True
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **kwargs)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimiser ``step`` (0-based): ``(step + 1) / warmup`` during warm-up, then cosine to
    ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` with :func:`warmup_cosine`; step it once per optimiser step."""
    if warmup < 0 or total < 1:
        raise ValueError(f"train.warmup must be >= 0 and train.steps >= 1, got {warmup!r}, {total!r}")
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))
