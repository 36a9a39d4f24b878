"""The training loop's options as a validated record: the ``train`` config node plus the top-level options
every command shares (``precision``, ``compile``, ``progress``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from medrecon.device import PRECISION_CHOICES

#: The settings that are top-level options of ``medrecon train`` (as in every command), not ``train.*``.
TOP_LEVEL = ("precision", "compile", "progress")


@dataclass(frozen=True)
class TrainSettings:
    """Options of the training loop (``cfg.train``, and ``precision``, ``compile``, ``progress`` from the top
    level of the config, spelt as in reconstruct and evaluate).

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
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``bf16`` or ``fp32``
            (``medrecon.device.resolve_precision``); it replaced ``train.amp`` (true = ``auto``).
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
    precision: str = "auto"
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
        if str(self.precision).strip().lower() not in PRECISION_CHOICES:
            raise ValueError(f"precision={self.precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
        for name in ("compile", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(
                f"train.stop_at must be null or in [1, train.steps={self.steps}], got {self.stop_at!r}"
            )

    @classmethod
    def from_cfg(cls, node: Any, **shared: Any) -> TrainSettings:
        """Build from ``cfg.train`` and the shared top-level options (``precision=``, ``compile=``,
        ``progress=``); unknown ``train`` keys are an error that lists the known ones (a renamed one: its new
        spelling)."""
        from medrecon.options import renamed

        values = dict(node or {})
        known = {f.name for f in fields(cls)} - set(TOP_LEVEL)
        for key in sorted(values):
            entry = renamed("train", f"train.{key}")
            if entry is not None:
                raise ValueError(entry.message(values[key]))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train option(s) {unknown}; known: {sorted(known)}")
        values.update({k: v for k, v in shared.items() if k in TOP_LEVEL})
        for name in ("lr", "ema_decay", "grad_clip", "min_lr_ratio", "weight_decay"):
            if name in values and isinstance(values[name], int) and not isinstance(values[name], bool):
                values[name] = float(values[name])
        return cls(**values)

    @property
    def last_step(self) -> int:
        """The step this run stops at."""
        return self.stop_at or self.steps
