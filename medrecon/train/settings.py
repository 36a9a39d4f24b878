"""The ``train`` config node as a validated record."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    """Options of the training loop (``cfg.train``).

    Attributes:
        steps: optimiser steps in the whole run (the LR schedule spans them).
        batch_size: samples per micro-batch per process.
        lr: peak learning rate (AdamW).
        warmup: linear warm-up steps.
        min_lr_ratio: the cosine decay ends at ``min_lr_ratio * lr``.
        weight_decay: AdamW weight decay.
        ema_decay: EMA decay per optimiser step, in [0, 1).
        ema_warmup: use ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates.
        grad_clip: max global gradient norm (0 = no clipping; the norm is still logged).
        accum: micro-batches accumulated per optimiser step.
        amp: bf16 autocast on CUDA (CPU always trains in fp32).
        compile: ``torch.compile`` the training module.
        val_every, ckpt_every, log_every: intervals in optimiser steps (0 = never; a final checkpoint is
            always written).
        keep_last: numbered checkpoints (and training states) to keep.
        max_bad_steps: stop after this many consecutive non-finite steps.
        stop_at: stop (with a checkpoint) at this step without changing the schedule (null = ``steps``); for
            time-limited jobs that are resumed later.
        progress: show a tqdm progress bar (rank 0).
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    warmup: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    grad_clip: float = 1.0
    accum: int = 1
    amp: bool = True
    compile: bool = False
    val_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 10
    log_every: int = 10
    stop_at: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "accum", "keep_last", "max_bad_steps")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup", "val_every", "ckpt_every", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"train.{name} must be an integer >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not self.grad_clip >= 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(
                f"train.stop_at must be null or in [1, train.steps={self.steps}], got {self.stop_at!r}"
            )

    @classmethod
    def from_cfg(cls, node: Any) -> TrainSettings:
        """Build from ``cfg.train``; unknown keys are an error that lists the known ones."""
        values = dict(node or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train option(s) {unknown}; known: {sorted(known)}")
        for name in ("lr", "ema_decay", "grad_clip", "min_lr_ratio", "weight_decay"):
            if name in values and isinstance(values[name], int) and not isinstance(values[name], bool):
                values[name] = float(values[name])
        return cls(**values)

    @property
    def last_step(self) -> int:
        """The step this run stops at."""
        return self.stop_at or self.steps
