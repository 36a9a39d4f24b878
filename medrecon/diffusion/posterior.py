"""K posterior samples per measurement -> the reconstruction (their mean) and per-voxel uncertainty (std)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from medrecon.diffusion.guidance import GuidanceConfig, data_consistency, guided_denoiser
from medrecon.diffusion.precond import EDMPrecond
from medrecon.diffusion.samplers import Callback, SamplerConfig
from medrecon.diffusion.tensors import randn
from medrecon.physics.base import Measurement, Task


@dataclass(frozen=True)
class PosteriorResult:
    """Posterior statistics for a batch of ``B`` measurements (encoded intensities, like the training images).

    Attributes:
        mean: ``(B, C, *S)`` the reconstruction (posterior mean estimate over the K samples).
        std: ``(B, C, *S)`` per-voxel standard deviation over the K samples (unbiased, ``correction=1``);
            zeros when ``K == 1``.
        samples: ``(B, K, C, *S)`` the individual samples, or ``None`` unless asked for.
    """

    mean: Tensor
    std: Tensor
    samples: Tensor | None = None


def posterior_sample(
    precond: EDMPrecond,
    task: Task,
    meas: Measurement,
    sampler: SamplerConfig,
    guidance: GuidanceConfig | None = None,
    *,
    samples: int = 1,
    generators: torch.Generator | Sequence[torch.Generator] | None = None,
    cfg_scale: float = 1.0,
    keep_samples: bool = False,
    callback: Callback | None = None,
    cond: Tensor | None = None,
    start: Tensor | None = None,
) -> PosteriorResult:
    """Draw ``samples`` posterior samples for each of the ``B`` measurements, batched as ``B * K`` rows.

    Args:
        precond: the trained denoiser (in eval mode, on the measurement's device).
        task: the measurement model; ``task.condition(meas)`` fixes the output grid ``S`` (the reconstruction
            grid, e.g. the upsampled grid for super-resolution).
        meas: ``B`` measurements.
        sampler: which solver and how many steps.
        guidance: measurement guidance (``None``: the conditional model only).
        samples: K >= 1 draws per measurement.
        generators: ``None``, one generator for the whole call, or one per measurement (length ``B``):
            then measurement ``b``'s K samples depend only on ``generators[b]``, not on the rest of the batch.
        cfg_scale: classifier-free guidance weight (1 = the conditional model).
        keep_samples: also return the individual samples.
        callback: passed to the sampler (it sees the ``B * K`` batch, row ``b * K + k``).
        cond: a precomputed condition ``(B, cond_channels, *S)`` (e.g. a 2.5D stack of neighbouring
            slices' conditions) used instead of ``task.condition(meas)``; it also fixes the output grid.
        start: ``(B, image_channels, *S)`` an estimate for the ``mmse`` sampler to refine instead of its first
            evaluation (e.g. a classical reconstruction); with ``dc`` guidance it is first projected onto the
            measurement, as the model's own estimate would be.

    Returns:
        :class:`PosteriorResult` with ``mean`` and ``std`` ``(B, image_channels, *S)`` float32.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    b, k = int(meas.y.shape[0]), samples
    if cond is not None and cond.shape[0] != b:
        raise ValueError(f"cond has {cond.shape[0]} items for {b} measurements")
    if generators is not None and not isinstance(generators, torch.Generator):
        generators = list(generators)
        if len(generators) != b:
            raise ValueError(
                f"got {len(generators)} generators for {b} measurements; pass one per measurement"
            )
        # row b*K + k draws from generators[b]: item b's stream is consumed only by its own K rows
        generators = [g for g in generators for _ in range(k)]
    rows = torch.arange(b, device=meas.y.device).repeat_interleave(k)
    meas_k = meas if k == 1 else meas.index(rows)
    with torch.no_grad():
        if cond is None:
            cond = task.condition(meas_k)
        elif k > 1:
            cond = cond[rows]
        denoiser = guided_denoiser(precond, task, meas_k, guidance, cfg_scale, cond=cond)
        noise = randn((b * k, precond.image_channels, *cond.shape[2:]), generators, cond.device)
        if start is None:
            x0 = sampler.run(denoiser, noise, generator=generators, callback=callback)
        else:  # only SamplerConfig (mmse) refines a given estimate
            first = start_estimate(start.to(cond.device)[rows], task, meas_k, guidance, sampler, precond)
            x0 = sampler.run(denoiser, noise, generator=generators, callback=callback, start=first)
    draws = x0.reshape(b, k, *x0.shape[1:])
    mean = draws.mean(1)
    std = draws.std(1, correction=1) if k > 1 else torch.zeros_like(mean)
    return PosteriorResult(mean=mean, std=std, samples=draws if keep_samples else None)


def start_estimate(
    start: Tensor,
    task: Task,
    meas: Measurement,
    guidance: GuidanceConfig | None,
    sampler: SamplerConfig,
    precond: Any,
) -> Tensor:
    """``start`` ``(N, C, *S)`` as the ``mmse`` sampler's first estimate: with ``dc`` guidance, projected onto
    ``meas`` as the model's estimate at ``sampler.sigma_max`` would be (:func:`guidance.data_consistency`);
    otherwise as given (``dps`` has no gradient to take through a fixed image)."""
    if guidance is None or guidance.name != "dc":
        return start.float()
    sigma = torch.full((start.shape[0],), float(sampler.sigma_max), device=start.device)
    as_given = data_consistency(lambda x, _sigma: x, task, meas, sigma_data=precond.sigma_data)
    return as_given(start.float(), sigma)
