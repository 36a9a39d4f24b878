"""The training loop: AMP, EMA, gradient accumulation and clipping, DDP, checkpoints, exact resume.

Randomness is a function of ``(seed, step, rank)``: the sampler's keys (which slice, crop and augmentation),
the generator that draws the task's masks/noise and the loss's sigmas and noise, and the global torch RNG
(dropout), which is reseeded at every step. A resumed run therefore continues bit for bit (on the same device
type): it restores weights, EMA, optimiser, schedule, step and data position, and nothing else is left to
chance.

Non-finite steps: when the loss or the gradient norm is NaN/Inf (on any process) the optimiser, the EMA and
the counters of good steps are left alone, the step is counted as bad and training goes on; after
``train.max_bad_steps`` bad steps in a row it stops with an error. Weights are never updated with non-finite
gradients, and a checkpoint is never written with non-finite values. The data layer never yields non-finite
samples (``medrecon.io.finite``); should a batch hold one anyway, the warning and the error say the data is
the cause and name the manifest records it came from, instead of advising optimiser settings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from medrecon.card import TrainingCard, ValidationScore
from medrecon.checkpoint import ModelSpec, load_weights, read_metadata, save_checkpoint
from medrecon.data.build import TrainingData
from medrecon.data.context import training_pair
from medrecon.data.sampler import ResumableSampler
from medrecon.device import cuda_memory_format, network_autocast, resolve_precision
from medrecon.distributed import DistEnv, all_reduce_mean, any_process, barrier
from medrecon.train.optim import build_optimizer, build_scheduler
from medrecon.train.rundir import RunDir
from medrecon.train.settings import TrainSettings
from medrecon.train.state import capture_rng, load_state, restore_rng, save_state

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


class TrainingStopped(Exception):
    """Training cannot go on (too many non-finite steps); the message says why and what to try."""


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (the run seed, the step, the rank, ...)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1] >> 1)


def batch_loss(
    module: nn.Module,
    loss_fn: Any,
    task: Any,
    batch: Tensor,
    context: int,
    generator: torch.Generator,
    autocast: contextlib.AbstractContextManager,
) -> Tensor:
    """Mean loss of one micro-batch (``EDMLoss`` or ``RegressionLoss``): degrade with the task (fp32), then
    run the network under ``autocast``.

    Args:
        module: the (DDP-wrapped / compiled) ``EDMPrecond``.
        batch: clean encoded samples ``(B, 2k + 1, *S)`` on the training device.
    """
    x0, _, cond = training_pair(task, batch, context, generator)
    with autocast:
        return loss_fn(module, x0, cond, generator).mean()


@dataclass
class StepStats:
    """One optimiser step: mean loss, gradient norm, learning rate, whether it was applied, and for a skipped
    step the ids of the records whose samples in it held NaN/inf (``()``: the data was finite)."""

    loss: float
    grad_norm: float
    lr: float
    ok: bool
    bad_data: tuple[str, ...] = ()


def ema_update_fn(decay: float, warmup: bool = True) -> Any:
    """``AveragedModel``'s ``multi_avg_fn`` for an EMA of decay ``decay``.

    With ``warmup`` the decay after ``n`` updates is ``min(decay, (1 + n) / (10 + n))``, so short runs and
    early validations are not dominated by the initial weights.
    """

    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


class Trainer:
    """Owns the model, EMA, optimiser and schedule of one training run.

    Args:
        settings: ``cfg.train``.
        spec: the model spec (also stored in checkpoints).
        task: the instantiated task (pair synthesis and validation).
        data: datasets and the encoder.
        loss_fn: ``EDMLoss``, or ``RegressionLoss`` for ``objective=regression``, ``AutoencoderLoss`` or
            ``LatentLoss`` for latent diffusion (``medrecon.latent.loss``; same calling convention).
        config: the resolved run config (stored in checkpoints).
        out: the run directory.
        device: this process's device.
        env: this process's rank.
        seed: the run seed.
        validator: ``validator(ema_precond, step) -> ValidationResult | None``, called on rank 0
            (``medrecon.train.validate.Validator``).
        num_workers: DataLoader workers.
        frozen: a latent model's frozen autoencoder, written into every checkpoint (``ae.*``).
        autoencoder_score: that autoencoder's best validation, recorded in the checkpoints' card.
    """

    def __init__(
        self,
        *,
        settings: TrainSettings,
        spec: ModelSpec,
        task: Any,
        data: TrainingData,
        loss_fn: Any,
        config: Any,
        out: Path,
        device: torch.device,
        env: DistEnv,
        seed: int,
        validator: Any = None,
        num_workers: int = 0,
        frozen: nn.Module | None = None,
        autoencoder_score: ValidationScore | None = None,
    ) -> None:
        self.frozen, self.autoencoder_score = frozen, autoencoder_score
        self.settings, self.spec, self.task, self.data, self.loss_fn = settings, spec, task, data, loss_fn
        self.config, self.run_dir, self.device = config, RunDir(Path(out)), device
        self.env, self.seed = env, seed
        self.validator, self.num_workers = validator, int(num_workers)
        cuda = device.type == "cuda"
        self.memory_format = cuda_memory_format(spec.spatial_dims, device)
        torch.manual_seed(seed_for(seed, 0xC0FFEE))  # identical initial weights on every rank
        self.precond = spec.build_precond().to(device)
        if self.memory_format is not None:
            self.precond = self.precond.to(memory_format=self.memory_format)
        self.ema = AveragedModel(
            self.precond,
            multi_avg_fn=ema_update_fn(settings.ema_decay, settings.ema_warmup),
            use_buffers=True,
        )
        self.ema.requires_grad_(False)
        module: nn.Module = self.precond
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(self.precond, device_ids=[device.index] if cuda else None)
        self.ddp_module = module
        self.module = torch.compile(module) if settings.compile else module
        self.optimizer = build_optimizer(
            self.precond.parameters(), settings.lr, settings.weight_decay, device=device
        )
        self.scheduler = build_scheduler(
            self.optimizer, settings.warmup, settings.steps, settings.min_lr_ratio
        )
        precision = resolve_precision(settings.precision, device)
        self.autocast = lambda: network_autocast(precision, device)
        self.step = 0
        self.bad_total = 0
        self.bad_in_row = 0
        self.best_psnr = -math.inf
        self.best_val: ValidationScore | None = None  # stored in checkpoints' card
        self.writer: Any = None
        self.losses: list[float] = []
        self.sampler: ResumableSampler | None = None  # set by _batches (names the records of a bad batch)

    # ---- resume -------------------------------------------------------------------------------------------
    @property
    def samples_per_step(self) -> int:
        """Samples one process consumes per optimiser step."""
        return self.settings.batch_size * self.settings.accum

    def resume(self) -> bool:
        """Load the newest checkpoint + training state of the run directory; False when there is none.

        Raises:
            UsageError: the stored run used another model, task or data geometry.
        """
        from medrecon.errors import UsageError

        steps = self.run_dir.steps()
        if not steps:
            return False
        step = steps[-1]
        ckpt, state_path = self.run_dir.ckpt(step), self.run_dir.state(step)
        meta = read_metadata(ckpt)
        stored, current = meta["spec"], self._spec_dict()
        if stored != current:
            diff = sorted(k for k in current if stored.get(k) != current[k])
            raise UsageError(
                f"cannot resume from {ckpt.name}: the run used a different {', '.join(diff)}; "
                "start a new run directory (out=...) or restore the original options"
            )
        state = load_state(state_path)
        self.precond.load_state_dict(load_weights(ckpt, "raw", str(self.device)))
        self.ema.module.load_state_dict(load_weights(ckpt, "ema", str(self.device)))
        self.ema.n_averaged.copy_(state["ema_n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.bad_total = int(state["bad_total"])
        self.bad_in_row = int(state["bad_in_row"])
        self.best_psnr = float(state["best_psnr"])
        self.best_val = meta["card"].validation if meta.get("card") is not None else None
        if int(state["world_size"]) != self.env.world_size:
            log.warning(
                "resuming a run of %d process(es) with %d: the data order changes from here on",
                int(state["world_size"]),
                self.env.world_size,
            )
        if self.env.is_main:
            restore_rng(state["rng"])
        log.info("resumed from %s at step %d", ckpt.name, self.step)
        return True

    def _spec_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self.spec)

    # ---- data ---------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[Tensor]:
        sampler = ResumableSampler(
            len(self.data.train),
            self.data.weights,
            seed=self.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
            start=self.step * self.samples_per_step,
        )
        self.sampler = sampler
        loader = DataLoader(
            self.data.train,
            batch_size=self.settings.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        for batch in loader:
            batch = batch.to(self.device, non_blocking=True)
            if self.memory_format is not None:
                batch = batch.contiguous(memory_format=self.memory_format)
            yield batch

    # ---- one step -----------------------------------------------------------------------------------------
    def train_step(self, batches: Iterator[Tensor]) -> StepStats:
        """One optimiser step over ``accum`` micro-batches (skipped when anything is non-finite)."""
        s = self.settings
        torch.manual_seed(seed_for(self.seed, self.step, self.env.rank, 1))  # dropout etc.
        self.optimizer.zero_grad(set_to_none=True)
        self.precond.train()
        total = torch.zeros((), device=self.device)
        finite_rows: list[Tensor] = []  # per sample: were the inputs finite (read only after a bad step)
        for micro in range(s.accum):
            batch = next(batches)
            finite_rows.append(torch.isfinite(batch).flatten(1).all(1))
            generator = torch.Generator(self.device).manual_seed(
                seed_for(self.seed, self.step, self.env.rank, 2, micro)
            )
            sync = micro == s.accum - 1 or not self.env.distributed
            ctx = contextlib.nullcontext() if sync else self.ddp_module.no_sync()
            with ctx:
                loss = batch_loss(
                    self.module, self.loss_fn, self.task, batch, self.data.context, generator, self.autocast()
                )
                (loss / s.accum).backward()
            total += loss.detach().float() / s.accum
        params = [p for p in self.precond.parameters() if p.grad is not None]
        max_norm = s.grad_clip if s.grad_clip > 0 else math.inf
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            if params
            else torch.zeros((), device=self.device)
        )
        bad = any_process(not (torch.isfinite(total) and torch.isfinite(grad_norm)), self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        bad_data = self._non_finite_records(finite_rows) if bad else ()
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_total += 1
            self.bad_in_row += 1
        else:
            self.optimizer.step()
            self.ema.update_parameters(self.precond)
            self.bad_in_row = 0
        with warnings.catch_warnings():  # after a skipped first step torch warns that the schedule runs ahead
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()  # the schedule follows the step count, skipped steps included
        self.step += 1
        return StepStats(float(all_reduce_mean(total)), float(grad_norm), lr, not bad, bad_data)

    def _non_finite_records(self, finite_rows: list[Tensor]) -> tuple[str, ...]:
        """Ids of the records whose samples in this step held NaN/inf, in order (``()`` when all were finite).

        This rank's samples of step ``self.step`` are its sampler keys ``step * samples_per_step + r``, in the
        order the micro-batches were drawn (the DataLoader keeps the sampler's order).
        """
        rows = torch.cat(finite_rows).cpu()
        if bool(rows.all()):
            return ()
        first = self.step * self.samples_per_step
        record_id = getattr(self.data.train, "record_id", None)
        ids = []
        for r in torch.nonzero(~rows).flatten().tolist():
            if self.sampler is None or record_id is None:
                ids.append(f"sample {first + r}")
            else:
                ids.append(record_id(self.sampler.item_at(first + r)))
        return tuple(dict.fromkeys(ids))

    # ---- checkpoints --------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write ``ckpt_<step>``, ``state_<step>`` and ``last`` (rank 0) and prune; returns the checkpoint."""
        rd = self.run_dir
        ckpt = self._write_weights(rd.ckpt(self.step))
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu(),
            "rng": capture_rng(),
            "data_position": self.step * self.samples_per_step,
            "bad_total": self.bad_total,
            "bad_in_row": self.bad_in_row,
            "best_psnr": self.best_psnr,
            "world_size": self.env.world_size,
        }
        save_state(rd.state(self.step), state)
        rd.copy_to(ckpt, rd.last)
        rd.prune(self.settings.keep_last)
        return ckpt

    def _write_weights(self, path: Path) -> Path:
        """The current raw and EMA weights with their metadata, as a checkpoint file at ``path``."""
        return save_checkpoint(
            path,
            raw=self.precond,
            ema=self.ema.module,
            spec=self.spec,
            encoder=self.data.encoder,
            config=self.config,
            step=self.step,
            card=TrainingCard(
                data=self.data.summary, validation=self.best_val, autoencoder=self.autoencoder_score
            ),
            **self._checkpoint_extras(),
        )

    def _checkpoint_extras(self) -> dict[str, Any]:
        """Keyword arguments of ``save_checkpoint`` a kind of run adds (the frozen autoencoder of a latent
        model; a distilled student's record)."""
        return {"frozen": self.frozen}

    # ---- validation & logging -----------------------------------------------------------------------------
    def validate(self) -> None:
        if self.validator is None or not self.env.is_main:
            return
        result = self.validator(self.ema.module, self.step)
        if result is None:
            return
        log.info("step %d validation: PSNR %.2f dB, SSIM %.4f", self.step, result.psnr, result.ssim)
        if self.writer is not None:
            self.writer.add_scalar("val/psnr", result.psnr, self.step)
            self.writer.add_scalar("val/ssim", result.ssim, self.step)
            self.writer.add_image("val/gt_input_recon", result.grid, self.step, dataformats="HW")
        if math.isfinite(result.psnr) and result.psnr > self.best_psnr:
            self.best_psnr = result.psnr
            if math.isfinite(result.ssim):
                self.best_val = ValidationScore(float(result.psnr), float(result.ssim), self.step)
            self._write_weights(self.run_dir.best)

    def _log_scalars(self, stats: StepStats, img_per_s: float) -> None:
        if self.writer is None:
            return
        w, step = self.writer, self.step
        w.add_scalar("train/loss", stats.loss, step)
        w.add_scalar("train/lr", stats.lr, step)
        w.add_scalar("train/grad_norm", stats.grad_norm, step)
        w.add_scalar("train/img_per_s", img_per_s, step)
        w.add_scalar("train/bad_steps", self.bad_total, step)
        if self.device.type == "cuda":
            w.add_scalar("train/gpu_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30, step)

    # ---- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> int:
        """Train from ``self.step`` to ``settings.last_step``; returns the exit code (0, or 1: stopped)."""
        from tqdm.auto import tqdm

        s = self.settings
        main = self.env.is_main
        if main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir.tensorboard), purge_step=self.step or None)
        images_per_step = self.samples_per_step * self.env.world_size
        bar = tqdm(
            total=s.last_step,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (main and s.progress),
            dynamic_ncols=True,
        )
        batches = self._batches()
        code = EXIT_OK
        losses: list[float] = []
        try:
            tick = time.perf_counter()
            while self.step < s.last_step:
                stats = self.train_step(batches)
                now = time.perf_counter()
                img_per_s = images_per_step / max(now - tick, 1e-9)
                tick = now
                if stats.ok:
                    losses.append(stats.loss)
                else:
                    data = ", ".join(stats.bad_data)
                    log.warning(
                        "step %d: non-finite loss or gradient (loss %s, grad norm %s): step skipped "
                        "(%d in a row, %d in total)%s",
                        self.step,
                        stats.loss,
                        stats.grad_norm,
                        self.bad_in_row,
                        self.bad_total,
                        f"; the batch itself held NaN/inf from record(s) {data}" if data else "",
                    )
                    if self.bad_in_row >= s.max_bad_steps and data:
                        raise TrainingStopped(
                            f"stopped at step {self.step}: {self.bad_in_row} non-finite steps in a row "
                            f"(train.max_bad_steps={s.max_bad_steps}); the training batch itself held NaN/inf "
                            f"values from record(s) {data}: the cause is the data, not the optimiser; check "
                            "those volumes (prepare's manifest counts non-finite voxels in 'nonfinite'); the "
                            "last checkpoint holds finite weights"
                        )
                    if self.bad_in_row >= s.max_bad_steps:
                        raise TrainingStopped(
                            f"stopped at step {self.step}: {self.bad_in_row} non-finite steps in a row "
                            f"(train.max_bad_steps={s.max_bad_steps}); lower train.lr, raise train.warmup, "
                            "set train.grad_clip, or pass precision=fp32; the last checkpoint holds finite "
                            "weights"
                        )
                bar.update(1)
                bar.set_postfix(loss=f"{stats.loss:.4f}", img_s=f"{img_per_s:.1f}", refresh=False)
                if s.log_every and self.step % s.log_every == 0:
                    self._log_scalars(stats, img_per_s)
                    if losses:
                        log.info(
                            "step %d/%d loss %.4f lr %.2e grad %.3f %.1f img/s",
                            self.step,
                            s.steps,
                            float(np.mean(losses[-s.log_every :])),
                            stats.lr,
                            stats.grad_norm,
                            img_per_s,
                        )
                if s.val_every and self.step % s.val_every == 0:
                    self.validate()
                if main and ((s.ckpt_every and self.step % s.ckpt_every == 0) or self.step == s.last_step):
                    self.save()
            if s.val_every and self.step % s.val_every and self.step == s.steps:
                self.validate()
        except TrainingStopped as err:
            log.error("%s", err)
            code = EXIT_FAILED
        finally:
            bar.close()
            del batches
            if self.writer is not None:
                self.writer.close()
        self.losses = losses
        barrier(
            self.env
        )  # every rank leaves the loop together: rank 0 may still be writing the last checkpoint
        return code
