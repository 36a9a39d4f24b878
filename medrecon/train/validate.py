"""Validation during training: reconstruct a few held-out slices/patches with a fast sampler and guidance
(a regression model, ``objective=regression``: its one evaluation, with the guidance).

An autoencoder (``objective=autoencoder``) is scored on how well it reconstructs the clean validation items
(the posterior mean decoded: the ceiling of a latent model built on it; the grid's middle column is then the
absolute error, times 4); a latent model (``objective=latent``) samples in latent space with the guidance
acting on decoded images and is scored on the decoded, projected result (``medrecon.latent.posterior``).

The same validation items and measurement seeds are used at every validation, so the numbers are comparable
across steps. PSNR/SSIM follow ``medrecon.evaluate.metrics`` (fastMRI's convention) on the decoded-to-[0, 1]
images of the stack (``(x + 1) / 2``; the encoder's scale does not matter for a relative measure during
training). For 3D patches the metrics use the stack of the patches' 2D slices and the image grid shows each
patch's middle slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medrecon.data.context import training_pair
from medrecon.diffusion.guidance import GuidanceConfig, guided_denoiser
from medrecon.diffusion.regression import regression_estimate
from medrecon.diffusion.samplers import SamplerConfig
from medrecon.diffusion.tensors import randn
from medrecon.evaluate.metrics import psnr, ssim


@dataclass(frozen=True)
class ValidationResult:
    """Mean PSNR (dB) and SSIM over the validation items, and a ``(rows * H, 3 * W)`` image grid in [0, 1]
    (one row per item: ground truth | the task's input (``task.pinv``) | reconstruction)."""

    psnr: float
    ssim: float
    grid: np.ndarray


def _middle(x: Tensor, spatial_dims: int) -> Tensor:
    """``(B, 1, *S)`` -> ``(B, H, W)``: the images themselves (2D) or each volume's middle slice (3D)."""
    x = x[:, 0]
    return x[..., x.shape[-1] // 2] if spatial_dims == 3 else x


class Validator:
    """Callable ``validator(precond, step) -> ValidationResult``.

    Args:
        task: the measurement model.
        dataset: the validation dataset (int keys).
        keys: which items.
        sampler: the (few-step) sampler.
        guidance: measurement guidance.
        context: 2.5D context of the model.
        spatial_dims: 2 or 3.
        seed: fixes the measurements and the initial noise.
        device: where to run.
        batch_size: items per forward pass.
        objective: ``diffusion`` (sample with ``sampler``) or ``regression`` (one evaluation; ``sampler`` is
            unused, ``guidance`` must be ``none`` or ``dc``); ``autoencoder`` (reconstruct the clean items;
            sampler, guidance and task unused) or ``latent`` (sample through ``codec``).
        codec: the frozen autoencoder of a latent model (``medrecon.latent.codec.LatentCodec``).
    """

    def __init__(
        self,
        *,
        task: Any,
        dataset: Any,
        keys: list[int],
        sampler: SamplerConfig,
        guidance: GuidanceConfig | None,
        context: int,
        spatial_dims: int,
        seed: int,
        device: torch.device,
        batch_size: int = 8,
        objective: str = "diffusion",
        codec: Any = None,
    ) -> None:
        self.task, self.dataset, self.keys = task, dataset, list(keys)
        self.objective, self.codec = objective, codec
        self.sampler, self.guidance, self.context = sampler, guidance, context
        self.spatial_dims, self.seed, self.device, self.batch_size = (
            spatial_dims,
            seed,
            device,
            max(1, batch_size),
        )

    def reconstruct(
        self, precond: torch.nn.Module, batch: Tensor, seed: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0, input, recon)`` each ``(B, 1, *S)`` for a clean batch ``(B, 2k + 1, *S)``."""
        generator = torch.Generator(self.device).manual_seed(seed)
        if self.objective == "autoencoder":
            x0 = batch[:, :1].float()
            recon = precond.decode(precond.encode(x0)[0]).float()
            return x0, ((recon - x0).abs() * 4 - 1).clamp(-1, 1), recon
        x0, meas, cond = training_pair(self.task, batch, self.context, generator)
        if self.objective == "latent":
            from medrecon.latent.posterior import latent_posterior

            recon = latent_posterior(
                precond, self.codec, self.task, meas, self.sampler, self.guidance, generators=generator
            ).mean
            return x0, self.task.pinv(meas), recon
        if self.objective == "regression":
            recon = regression_estimate(precond, self.task, meas, self.guidance, cond=cond)
            return x0, self.task.pinv(meas), recon
        denoiser = guided_denoiser(precond, self.task, meas, self.guidance, cond=cond)
        noise = randn(x0.shape, generator, self.device)
        recon = self.sampler.run(denoiser, noise, generator=generator)
        return x0, self.task.pinv(meas), recon

    def __call__(self, precond: torch.nn.Module, step: int) -> ValidationResult | None:
        if not self.keys:
            return None
        was_training = precond.training
        precond.eval()
        gts, inputs, recons = [], [], []
        try:
            for start in range(0, len(self.keys), self.batch_size):
                chunk = self.keys[start : start + self.batch_size]
                batch = torch.stack([self.dataset[k] for k in chunk]).to(self.device)
                x0, inp, rec = self.reconstruct(precond, batch, self.seed + start)
                gts.append(x0.float().cpu())
                inputs.append(inp.float().cpu())
                recons.append(rec.float().cpu())
        finally:
            precond.train(was_training)
        gt, inp, rec = (((torch.cat(t) + 1) / 2) for t in (gts, inputs, recons))
        stack_gt = gt[:, 0].reshape(-1, *gt.shape[-2:]).numpy()
        stack_rec = rec[:, 0].reshape(-1, *rec.shape[-2:]).clamp(0, 1).numpy()
        if self.spatial_dims == 3:  # slices along the last axis
            stack_gt = np.moveaxis(gt[:, 0].numpy(), -1, 1).reshape(-1, *gt.shape[-3:-1])
            stack_rec = np.moveaxis(rec[:, 0].clamp(0, 1).numpy(), -1, 1).reshape(-1, *rec.shape[-3:-1])
        data_range = 1.0
        value_psnr = psnr(stack_gt, stack_rec, data_range)
        value_ssim = ssim(stack_gt, stack_rec, data_range)
        rows = [
            torch.cat([_middle(t, self.spatial_dims)[i] for t in (gt, inp, rec)], dim=-1)
            for i in range(gt.shape[0])
        ]
        grid = torch.cat(rows, dim=0).clamp(0, 1).numpy()
        return ValidationResult(psnr=value_psnr, ssim=value_ssim, grid=grid)
