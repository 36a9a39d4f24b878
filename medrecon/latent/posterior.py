"""Posterior samples of a latent model, returned as images: sample in latent space, decode, project.

``latent_posterior`` is ``medrecon.diffusion.posterior.posterior_sample`` -- samplers, EDM preconditioning,
classifier-free guidance and guidance wrappers unchanged -- run on :class:`~medrecon.latent.task.LatentTask`
(the physics through the decoder) and a condition on the latent grid; each of the ``K`` latent draws is then
decoded, and with ``project_output`` the decoded image is projected onto the measurement (``task.project``),
so the output agrees with the data exactly where the physics says it must, whatever the autoencoder's error.
Mean and standard deviation are taken over the decoded (and projected) images, not over latents.

What ``guidance=`` runs for a latent model (:func:`guidance_plan`), chosen by measurement on the validation slab
of the sample scan (``scripts/latent_guidance.py``; docs/training.md, "Latent diffusion"):

- ``dc``: the decoded output projected onto the measurement. Projecting every x0 estimate during sampling
  (decode, project, encode back: ``dc`` through ``LatentTask``) cost 3.6 dB there: the projection's
  block-wise corrections are not images the encoder has seen, and encoding them back drags the latent off the
  model's manifold;
- ``dps``: DPS through the decoder and the denoiser at every step, then the output projection (it also lost
  to the output projection alone there; offered for tasks where a projection does not exist in closed form);
- ``none``: the latent model alone, decoded.

Volumes larger than the trained latent size go through the denoiser in overlapping windows
(``medrecon.latent.tiling.TiledPrecond``); the codec's own ``tile`` does the same for the autoencoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from medrecon.diffusion.guidance import GuidanceConfig
from medrecon.diffusion.posterior import PosteriorResult, posterior_sample
from medrecon.diffusion.samplers import SamplerConfig
from medrecon.latent.codec import LatentCodec
from medrecon.latent.task import LatentTask
from medrecon.latent.tiling import TiledPrecond
from medrecon.physics.base import Measurement, Task


def latent_posterior(
    precond: torch.nn.Module,
    codec: LatentCodec,
    task: Task,
    meas: Measurement,
    sampler: SamplerConfig,
    guidance: GuidanceConfig | None = None,
    *,
    samples: int = 1,
    generators: torch.Generator | Sequence[torch.Generator] | None = None,
    cfg_scale: float = 1.0,
    project_output: bool | None = None,
    step_guidance: GuidanceConfig | None = None,
    tile: Sequence[int] | None = None,
    overlap: float = 0.25,
) -> PosteriorResult:
    """``samples`` posterior draws for each of the ``B`` measurements, as images.

    Args:
        precond: the latent ``EDMPrecond`` (eval mode).
        codec: the frozen autoencoder.
        task: the image-space task; ``task.condition(meas)`` fixes the reconstruction grid ``S``.
        meas: ``B`` measurements.
        sampler, samples, generators, cfg_scale: as for ``posterior_sample``.
        guidance: ``none``, ``dc`` or ``dps`` (``None``: ``none``), run as :func:`guidance_plan` says.
        project_output: project every decoded draw onto its measurement (``task.project``); ``None``: the plan's.
        step_guidance: the guidance wrapped around the latent denoiser at every step (acting on decoded images
            through :class:`LatentTask`); ``None``: the plan's (measurement scripts set it).
        tile: latent window size for the denoiser (``None``: whole volumes).
        overlap: window overlap fraction.

    Returns:
        ``PosteriorResult`` with ``mean`` and ``std`` ``(B, image_channels, *S)`` float32 (``std`` zeros for
        one sample).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    b, k = int(meas.y.shape[0]), samples
    plan_steps, plan_project = guidance_plan(guidance)
    step_guidance = plan_steps if step_guidance is None else step_guidance
    project_output = plan_project if project_output is None else project_output
    with torch.no_grad():
        image_cond = task.condition(meas)
        size = tuple(image_cond.shape[2:])
        cond = codec.condition(image_cond)
    denoiser = precond if tile is None else TiledPrecond(precond, tile, overlap)
    latent = posterior_sample(
        denoiser,
        LatentTask(task, codec, size),
        meas,
        sampler,
        step_guidance,
        samples=k,
        generators=generators,
        cfg_scale=cfg_scale,
        keep_samples=True,
        cond=cond,
    )
    with torch.no_grad():
        images = codec.decode(latent.samples.flatten(0, 1), size).float()
        if project_output:
            rows = torch.arange(b, device=meas.y.device).repeat_interleave(k)
            images = task.project(images, meas if k == 1 else meas.index(rows))
    draws = images.reshape(b, k, *images.shape[1:])
    mean = draws.mean(1)
    std = draws.std(1, correction=1) if k > 1 else torch.zeros_like(mean)
    return PosteriorResult(mean=mean, std=std)


def reconstruct_autoencoder(codec: LatentCodec, x: Tensor) -> Tensor:
    """``decode(encode(x))``: what the autoencoder alone makes of images ``x`` ``(B, C, *S)`` -- the ceiling of
    any latent model built on it."""
    with torch.no_grad():
        return codec.decode(codec.encode(x), tuple(x.shape[2:]))


def guidance_plan(guidance: GuidanceConfig | None) -> tuple[GuidanceConfig, bool]:
    """``(guidance at every step, project the decoded output)`` for ``guidance=`` (see the module docstring):
    ``dc`` -> (none, True); ``dps`` -> (dps, True); ``none`` -> (none, False)."""
    name = "none" if guidance is None else guidance.name
    if name == "dps":
        return guidance, True
    return GuidanceConfig("none"), name == "dc"


def output_projection(guidance: GuidanceConfig | None) -> bool:
    """Whether decoded draws are projected onto the measurement for a guidance setting (:func:`guidance_plan`):
    for ``dc`` (the default) and ``dps``; not for ``none``, which shows what the model alone makes of the
    condition."""
    return guidance_plan(guidance)[1]
