"""Guidance as denoiser wrappers: each takes a denoiser ``D(x, sigma) -> x0_hat`` and returns one with the
same signature, so every sampler works with every guidance and the sampling loops carry no guidance flags.

- :func:`conditional_denoiser` / :func:`unconditional_denoiser` bind the condition of an ``EDMPrecond``.
- :func:`cfg`: classifier-free guidance (Ho & Salimans 2022), ``D_u + w (D_c - D_u)``.
- :func:`data_consistency`: project each ``x0_hat`` onto the measurement (``task.project``), as in
  score-based MRI / "DDNM"-style range-null-space methods: the sampler's next step starts from a consistent
  x0.
- :func:`dps`: Diffusion Posterior Sampling (Chung et al. 2023) gradient guidance, in denoiser form.

Measurements must be batched like ``x`` (for K posterior draws per input, repeat the measurement K times:
``meas.index(torch.arange(B).repeat_interleave(K))``, as ``posterior.posterior_sample`` does). Residual norms
are per sample, never over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medrecon.diffusion.precond import EDMPrecond
from medrecon.diffusion.samplers import Denoiser
from medrecon.diffusion.tensors import append_dims
from medrecon.physics.base import Measurement, Task

GUIDANCE_NAMES = ("none", "dc", "dps")


def conditional_denoiser(precond: EDMPrecond, cond: Tensor) -> Denoiser:
    """``D(x, sigma) = precond(x, sigma, cond)`` with ``cond`` ``(B, cond_channels, *S)`` bound."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        return precond(x, sigma, cond)

    return denoiser


def unconditional_denoiser(precond: EDMPrecond) -> Denoiser:
    """``D(x, sigma) = precond(x, sigma, None)``: the zero condition that ``EDMLoss`` drops to."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        return precond(x, sigma, None)

    return denoiser


def cfg(cond_denoiser: Denoiser, uncond_denoiser: Denoiser, scale: float) -> Denoiser:
    """Classifier-free guidance: ``D_u + scale * (D_c - D_u)``.

    ``scale == 1`` returns ``cond_denoiser`` itself (exactly the conditional model, no unconditional
    evaluation); ``scale == 0`` returns ``uncond_denoiser``; ``scale > 1`` sharpens towards the condition.
    """
    if scale < 0:
        raise ValueError(f"cfg scale must be >= 0, got {scale!r}")
    if scale == 1:
        return cond_denoiser
    if scale == 0:
        return uncond_denoiser

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        d_u = uncond_denoiser(x, sigma)
        return d_u + scale * (cond_denoiser(x, sigma) - d_u)

    return denoiser


def x0_error_std(sigma: Tensor, sigma_data: float) -> Tensor:
    """Standard deviation of the error of ``x0_hat = D(x, sigma)``:
    ``sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (EDM's ``c_out``; exact for Gaussian data of variance
    ``sigma_data^2``)."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def data_consistency(
    denoiser: Denoiser, task: Task, meas: Measurement, *, sigma_data: float | None = None
) -> Denoiser:
    """``D'(x, sigma) = task.project(D(x, sigma), meas, tau)``: every x0 estimate is pulled onto the
    measurement; the final sample, ``D'`` at the last step, is too.

    Noise-free measurements are met exactly. For noisy ones ``task.project`` takes a Wiener step weighted by
    ``tau``, the assumed error of the estimate: with ``sigma_data`` given, ``tau = x0_error_std(sigma,
    sigma_data)`` per sample (large at high noise, -> 0 as sigma -> 0, so the last steps do not fit the
    measurement noise); without it, the task's default ``dc_tau``.
    """

    def denoiser_dc(x: Tensor, sigma: Tensor) -> Tensor:
        x0 = denoiser(x, sigma)
        if sigma_data is None:
            return task.project(x0, meas)
        return task.project(x0, meas, tau=x0_error_std(sigma.float(), sigma_data))

    return denoiser_dc


def residual_norm(task: Task, x0: Tensor, meas: Measurement) -> Tensor:
    """``||y_b - A x0_b||_2`` per sample: ``(B,)`` float (complex measurements use the modulus)."""
    r = meas.y - task.forward(x0, meas.params)
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)


def dps(denoiser: Denoiser, task: Task, meas: Measurement, scale: float) -> Denoiser:
    """Diffusion Posterior Sampling (Chung et al. 2023) as a denoiser wrapper.

    DPS adds the likelihood score ``grad_x log p(y | x) ~= -zeta * grad_x ||y - A x0_hat(x)||`` (Algorithm 1
    with step ``zeta_i = zeta' / ||y - A x0_hat||`` on the squared norm, which is the gradient of the norm
    itself up to a factor 2). A denoiser relates to the score by ``grad log p(x) = (D(x, sigma) - x) /
    sigma^2``, so adding a term to the score is adding ``sigma^2`` times it to the denoiser::

        D'(x_b, sigma) = D(x_b, sigma) - scale * sigma^2 * grad_{x_b} ||y_b - A D(x_b, sigma)||_2

    for every sample ``b`` separately: the residual norms are per sample and the gradient of their *sum* is
    taken, which is the per-sample gradient because sample ``b``'s residual depends only on ``x_b`` (the
    network mixes nothing across the batch). The correction's size hardly depends on sigma (``sigma^2 dD/dx``
    tends to ``sigma_data^2`` at large sigma) and it vanishes as sigma -> 0; unlike the paper's per-step
    update it does not grow with the number of steps (it is a drift of the reverse ODE/SDE).

    ``scale`` is ``zeta'``; tune it on validation data. Because the gradient of a norm is a unit direction
    over all ``M`` measured values, the per-voxel pull is about ``scale * sigma_data^2 / sqrt(M)``: the scale
    that works grows like ``sqrt(M)`` (toy 8x8 -> 4x4 downsampling: 100; a 256x256 slice is ~30x larger). The
    guidance is an explicit step, so it needs enough steps: with a strong scale use ~50+ steps (ddim or
    dpmpp); with 20 steps the residual stalls at the step size. Gradients flow through the denoiser (a network
    backward per step, about 2-3x the cost of an unguided step); do not call under ``torch.inference_mode()``.
    """
    if scale < 0:
        raise ValueError(f"dps scale must be >= 0, got {scale!r}")

    def denoiser_dps(x: Tensor, sigma: Tensor) -> Tensor:
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            x0 = denoiser(x_in, sigma)
            r = meas.y - task.forward(x0, meas.params)
            # sqrt(|r|^2 + tiny): the gradient of an exactly consistent sample is 0, not NaN
            norm = (r.abs().square().reshape(r.shape[0], -1).sum(1) + 1e-20).sqrt()
            (grad,) = torch.autograd.grad(norm.sum(), x_in)
        sigma2 = (
            append_dims(torch.as_tensor(sigma, device=x.device, dtype=x0.dtype).reshape(-1), x0.ndim) ** 2
        )
        return (x0 - scale * sigma2 * grad).detach()

    return denoiser_dps


@dataclass(frozen=True)
class GuidanceConfig:
    """Measurement guidance, as ``conf/guidance/*.yaml`` instantiate it.

    Attributes:
        name: ``none`` (the conditional model only), ``dc`` (data-consistency projection) or ``dps``.
        scale: DPS step size ``zeta'`` (``dps`` only; ignored by ``none`` and ``dc``), >= 0.
    """

    name: str = "none"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in GUIDANCE_NAMES:
            raise ValueError(f"unknown guidance {self.name!r}; choose one of {', '.join(GUIDANCE_NAMES)}")
        if not float(self.scale) >= 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale!r}")

    def wrap(
        self, denoiser: Denoiser, task: Task, meas: Measurement, *, sigma_data: float | None = None
    ) -> Denoiser:
        """The guided denoiser for measurements ``meas`` (batched like the samples); ``sigma_data`` (the
        preconditioner's) makes ``dc`` noise-aware per step (see :func:`data_consistency`)."""
        if self.name == "dc":
            return data_consistency(denoiser, task, meas, sigma_data=sigma_data)
        if self.name == "dps":
            return dps(denoiser, task, meas, float(self.scale))
        return denoiser


def guided_denoiser(
    precond: EDMPrecond,
    task: Task,
    meas: Measurement,
    guidance: GuidanceConfig | None = None,
    cfg_scale: float = 1.0,
    *,
    cond: Tensor | None = None,
) -> Denoiser:
    """The full sampling denoiser: condition on ``task.condition(meas)`` (or the precomputed ``cond``
    ``(B, cond_channels, *S)``, e.g. a 2.5D context stack), classifier-free guidance when ``cfg_scale != 1``,
    then measurement guidance (``None`` means ``none``; ``dc`` uses ``precond.sigma_data`` for its per-step
    noise-aware weight)."""
    cond = task.condition(meas) if cond is None else cond
    base = conditional_denoiser(precond, cond)
    if cfg_scale != 1:
        base = cfg(base, unconditional_denoiser(precond), cfg_scale)
    return (guidance or GuidanceConfig()).wrap(base, task, meas, sigma_data=precond.sigma_data)
