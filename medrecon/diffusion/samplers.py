"""Samplers: plain functions over a denoiser, all with one signature (the k-diffusion contract)::

    sample_xxx(denoiser, x, sigmas, *, generator=None, callback=None, **solver_kw) -> x0

- ``denoiser(x, sigma) -> x0_hat``: ``x`` ``(B, C, *S)``, ``sigma`` ``(B,)`` float32; the condition,
  classifier-free guidance and measurement guidance are bound into it beforehand
  (``medrecon.diffusion.guidance``).
- ``x``: the initial sample at noise level ``sigmas[0]``, i.e. already scaled (``x = sigmas[0] * n``).
- ``sigmas``: decreasing noise levels ending with 0 (``schedule.karras_sigmas``); ``len(sigmas) - 1`` steps.
- ``generator``: ``None``, one ``torch.Generator``, or one per batch item (then item ``b``'s noise depends
  only on ``generator[b]``, so its sample does not depend on what else is in the batch).
- ``callback(i, sigma, x, denoised)``: called once per step with the step index, the current noise level
  (float), the current sample and the denoiser's output at it.

The maths is in the variance-exploding form of EDM, ``x_sigma = x0 + sigma * n``, which is what a discrete
DDPM/DDIM chain becomes after dividing by ``sqrt(alpha_bar)`` (``sigma^2 = (1 - alpha_bar) / alpha_bar``).
Call the functions under ``torch.no_grad()`` (``SamplerConfig.run`` does); DPS guidance turns gradients back
on inside its wrapper, so do not use ``torch.inference_mode()`` with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from medrecon.diffusion.schedule import karras_sigmas
from medrecon.diffusion.tensors import Generators, randn_like, sigma_batch

Denoiser = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, float, Tensor, Tensor], None]


def _as_sigma_list(sigmas: Tensor | Sequence[float]) -> list[float]:
    values = [float(s) for s in (sigmas.reshape(-1).tolist() if isinstance(sigmas, Tensor) else sigmas)]
    if len(values) < 2 or values[-1] != 0.0 or any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(
            f"sigmas must be strictly decreasing, have >= 2 entries and end with 0, got {values[:4]}..."
        )
    return values


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step ``sigma_from -> sigma_to`` into a deterministic part down to ``sigma_down`` and fresh
    noise ``sigma_up`` with ``sigma_down^2 + sigma_up^2 = sigma_to^2``.

    ``sigma_up = eta * sigma_to * sqrt(1 - sigma_to^2 / sigma_from^2)`` (capped at ``sigma_to``) is DDIM's
    ``sigma_t(eta)`` in variance-exploding units: ``eta = 0`` is deterministic DDIM, ``eta = 1`` the DDPM
    posterior.
    """
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * sigma_to * math.sqrt(1 - sigma_to**2 / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling with the exact Gaussian posterior ``q(x_s | x_t, x0 = x0_hat)`` (Ho et al. 2020).

    For ``x_t = x0 + sigma_t n``, ``s < t``: mean ``r x_t + (1 - r) x0_hat`` and variance
    ``sigma_s^2 (1 - r)`` with ``r = sigma_s^2 / sigma_t^2``; the last step returns ``x0_hat``. The reference
    sampler: it needs many steps (1000 by default) and is slow.
    """
    s = _as_sigma_list(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        denoised = denoiser(x, sigma_batch(sigma, x))
        if callback is not None:
            callback(i, sigma, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        r = sigma_next**2 / sigma**2
        x = r * x + (1 - r) * denoised + sigma_next * math.sqrt(1 - r) * randn_like(x, generator)
    return x


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021): ``eta = 0`` is deterministic (the Euler method on the probability-flow ODE in
    sigma), ``0 < eta <= 1`` mixes in fresh noise (``eta = 1`` equals :func:`sample_ddpm`); see
    :func:`ancestral_step`.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    s = _as_sigma_list(sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        denoised = denoiser(x, sigma_batch(sigma, x))
        if callback is not None:
            callback(i, sigma, x, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        # Euler step of dx/dsigma = (x - x0_hat) / sigma from sigma to sigma_down
        x = denoised + (sigma_down / sigma) * (x - denoised)
        if sigma_up > 0:
            x = x + sigma_up * randn_like(x, generator)
    return x


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a deterministic second-order multistep solver in
    ``lambda = -ln(sigma)``; one denoiser evaluation per step. ``generator`` is accepted for the common
    signature and unused.

    With ``h = ln(sigma_i / sigma_{i+1})`` and ``r = h_{i-1} / h``: ``D = (1 + 1/(2r)) x0_hat_i - 1/(2r)
    x0_hat_{i-1}`` (first order, ``D = x0_hat_i``, on the first step), then ``x_{i+1} = (sigma_{i+1}/sigma_i)
    x_i + (1 - sigma_{i+1}/sigma_i) D``; the last step (to sigma = 0) returns ``x0_hat``.
    """
    s = _as_sigma_list(sigmas)
    old_denoised: Tensor | None = None
    h_last = 0.0
    for i, (sigma, sigma_next) in enumerate(zip(s[:-1], s[1:])):
        denoised = denoiser(x, sigma_batch(sigma, x))
        if callback is not None:
            callback(i, sigma, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        d = denoised
        if old_denoised is not None:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


def sample_mmse(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    renoise: float = 0.0,
    start: Tensor | None = None,
) -> Tensor:
    """The conditional model's own minimum-mean-square-error estimate, optionally refined.

    The first evaluation, ``x0_hat = D(x, sigmas[0])`` at a high noise level, is the denoiser's estimate of
    ``E[x0 | y]``: at ``sigma >> sigma_data`` the noisy input carries almost no information, so the trained
    conditional denoiser returns the posterior mean given the measurement (the minimiser of EDM's loss at that
    level). With measurement guidance bound into ``denoiser`` it is data-consistent. One evaluation stands in
    for the average of K full chains.

    When ``sigmas`` has more entries, the estimate is treated as a sample at ``sigmas[1]`` (its error is of
    that order) and integrated to 0 with deterministic DDIM (Euler) steps over ``sigmas[1:]``, the guidance
    applied at each: a short refinement from an intermediate noise level (SDEdit, Meng et al. 2022) that
    restores detail the mean smooths away. ``renoise`` in [0, 1] adds fresh noise of ``renoise * sigmas[1]``
    first (1 = SDEdit proper, a posterior draw for ``samples > 1``; 0 = deterministic). First order on
    purpose: a second-order multistep solver overshoots when its start is not on the ODE trajectory.

    ``start`` ``(B, C, *S)``: an estimate of ``x0`` to refine *instead of* the first evaluation (e.g. a
    classical reconstruction, already data-consistent; Chung et al. 2022, "Come-closer-diffuse-faster"): the
    refinement then costs ``len(sigmas) - 2`` evaluations and the model only corrects what is wrong at the
    refinement level. Needs ``len(sigmas) > 2`` (a refinement to run).
    """
    if not 0.0 <= renoise <= 1.0:
        raise ValueError(f"renoise must be in [0, 1], got {renoise!r}")
    s = _as_sigma_list(sigmas)
    if start is not None:
        if len(s) == 2:
            raise ValueError("a start estimate needs a refinement: mmse with steps >= 2")
        if start.shape != x.shape:
            raise ValueError(f"start has shape {tuple(start.shape)}, the samples {tuple(x.shape)}")
        denoised = start.to(x.dtype)
    else:
        denoised = denoiser(x, sigma_batch(s[0], x))
    if callback is not None:
        callback(0, s[0], x, denoised)
    if len(s) == 2:
        return denoised
    x = denoised
    if renoise > 0:
        x = x + renoise * s[1] * randn_like(denoised, generator)

    def shifted(i: int, sigma: float, xi: Tensor, d: Tensor) -> None:
        if callback is not None:
            callback(i + 1, sigma, xi, d)

    return sample_ddim(denoiser, x, s[1:], generator=generator, callback=shifted)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp": sample_dpmpp_2m,
    "mmse": sample_mmse,
}
#: ddpm is the slow reference; ddim (eta=0) at 50 and DPM-Solver++(2M) at 20 bias a Gaussian test std by about
#: 5 % (see docs/benchmarks.md, "Sampler accuracy on a known answer")
DEFAULT_STEPS: dict[str, int] = {"ddpm": 1000, "ddim": 50, "dpmpp": 20, "mmse": 5}


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler with its schedule, as ``conf/sampler/*.yaml`` instantiate it.

    Attributes:
        name: ``ddpm``, ``ddim``, ``dpmpp`` or ``mmse``.
        steps: solver steps (= denoiser evaluations); ``None`` picks ``DEFAULT_STEPS[name]``.
        eta: DDIM's noise fraction in [0, 1] (``ddim`` only).
        sigma_min, sigma_max, rho: the Karras schedule (``schedule.karras_sigmas``); for ``mmse``,
            ``sigma_max`` is the level of the one-evaluation estimate.
        sigma_refine: ``mmse`` with ``steps > 1``: where the refinement starts (``sigma_min < sigma_refine <
            sigma_max``); its ``steps - 1`` levels run from there to 0 with Karras spacing ``rho``.
        renoise: ``mmse`` only: fresh noise added before the refinement, as a fraction of ``sigma_refine``.
        start: ``mmse`` only: what the refinement starts from: ``model`` (the one-evaluation estimate),
            ``auto`` (chosen per task by the method that runs the sampler: a classical reconstruction for MRI,
            ``medrecon.recon.methods.resolve_start``) or a baseline's name (``tv``, ...). Data only here: the
            sampler is handed the estimate itself (``run(start=...)``).
    """

    name: str = "dpmpp"
    steps: int | None = None
    eta: float = 0.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sigma_refine: float = 0.2
    renoise: float = 0.0
    start: str = "model"

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        steps = DEFAULT_STEPS[self.name] if self.steps is None else self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sampler steps must be an integer >= 1 (e.g. 10, 20, 50, 1000), got {steps!r}")
        object.__setattr__(self, "steps", steps)
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not 0.0 <= self.renoise <= 1.0:
            raise ValueError(f"renoise must be in [0, 1], got {self.renoise!r}")
        if self.eta != 0 and self.name != "ddim":
            raise ValueError(
                f"eta={self.eta!r} applies only to sampler 'ddim' (ddpm is ancestral by construction, "
                f"dpmpp is deterministic), got sampler {self.name!r}"
            )
        if not isinstance(self.start, str) or not self.start:
            raise ValueError(f"start must be a name (model, auto, tv, ...), got {self.start!r}")
        if self.start not in ("model", "auto") and (self.name != "mmse" or self.steps < 2):
            raise ValueError(
                f"start={self.start} refines a given estimate: it needs sampler mmse with steps >= 2, got "
                f"{self.name} with {self.steps} step(s)"
            )
        karras_sigmas(1, self.sigma_min, self.sigma_max, self.rho)  # validates the schedule parameters
        if self.name == "mmse" and self.steps > 1 and not self.sigma_min < self.sigma_refine < self.sigma_max:
            raise ValueError(
                f"sigma_refine must lie between sigma_min and sigma_max, got {self.sigma_refine!r}"
            )

    def sigmas(self) -> Tensor:
        """``(steps + 1,)`` float64 noise levels ending in 0. For ``mmse``: ``sigma_max`` (the one-evaluation
        estimate), then ``steps - 1`` refinement levels from ``sigma_refine`` down (Karras spacing)."""
        if self.name == "mmse" and self.steps > 1:
            refine = karras_sigmas(int(self.steps) - 1, self.sigma_min, self.sigma_refine, self.rho)
            return torch.cat([refine.new_tensor([self.sigma_max]), refine])
        return karras_sigmas(int(self.steps), self.sigma_min, self.sigma_max, self.rho)

    def run(
        self,
        denoiser: Denoiser,
        noise: Tensor,
        generator: Generators = None,
        callback: Callback | None = None,
        start: Tensor | None = None,
    ) -> Tensor:
        """Sample: ``noise`` is standard normal ``(B, C, *S)``; it is scaled by ``sigma_max`` and integrated
        to sigma = 0 under ``torch.no_grad()``. ``start``: the estimate an ``mmse`` refinement starts from
        instead of the first evaluation (see :func:`sample_mmse`). Returns ``x0`` ``(B, C, *S)`` float32."""
        kwargs: dict[str, Any] = {}
        if self.name == "ddim":
            kwargs["eta"] = self.eta
        elif self.name == "mmse":
            kwargs["renoise"] = self.renoise
            kwargs["start"] = start
        if start is not None and self.name != "mmse":  # (mmse itself refuses a start without a refinement)
            raise ValueError("a start estimate is refined by sampler mmse with steps >= 2 only")
        with torch.no_grad():
            x = noise.float() * self.sigma_max
            return SAMPLERS[self.name](
                denoiser, x, self.sigmas(), generator=generator, callback=callback, **kwargs
            )


def build_sampler(
    name: str,
    steps: int | None = None,
    eta: float = 0.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    sigma_refine: float = 0.2,
    renoise: float = 0.0,
    start: str = "model",
) -> SamplerConfig:
    """A validated :class:`SamplerConfig` (``steps=None`` takes the sampler's default)."""
    return SamplerConfig(
        name=name,
        steps=steps,
        eta=eta,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
        sigma_refine=sigma_refine,
        renoise=renoise,
        start=start,
    )


__all__ = [
    "DEFAULT_STEPS",
    "SAMPLERS",
    "Callback",
    "Denoiser",
    "SamplerConfig",
    "ancestral_step",
    "build_sampler",
    "randn_like",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_mmse",
]
