"""The supervised baseline: the same preconditioned network trained to map the condition to the image directly.

This is the baseline every reconstruction paper reports (fastMRI's U-Net): one network evaluation from the
measurement's condition to the image, trained on the same pairs (task, degradations, data pipeline, network,
optimiser, budget) as the diffusion model, so a comparison isolates the training objective. It reuses
``EDMPrecond`` unchanged, evaluated at one fixed noise level with a zero noisy input::

    x0_hat = D(0, REGRESSION_SIGMA, cond) = c_out(REGRESSION_SIGMA) * F(cat[0, cond], c_noise(REGRESSION_SIGMA))

so the checkpoint format, loading, reconstruct and evaluate work as for a diffusion model; a checkpoint says
which estimator it is by its spec's ``objective`` (``medrecon.checkpoint.ModelSpec``). ``REGRESSION_SIGMA``
is the level of the mmse sampler's one-evaluation estimate (``conf/sampler/mmse.yaml``), where ``c_out`` is
about ``sigma_data``: the raw network's target ``x0 / c_out`` then has unit variance, as EDM's
preconditioning intends. The zero input is a constant token (the network learns to ignore that channel).

Loss: ``norm="l1"`` (the default) is ``|x0_hat - x0| / c_out`` averaged over voxels: the loss of fastMRI's
U-Net baseline, so the number compares with the baseline papers report (L1 also trains image-restoration
networks to sharper results than L2, Zhao et al. 2017, and its minimiser, the posterior median, is robust to
the heavy tails of intensity errors). ``norm="l2"`` is the squared error ``/ c_out^2``, EDM's weighted loss at
that sigma, whose minimiser is ``E[x0 | y]``, the estimand of ``sampler=mmse``: the like-for-like MMSE
comparison. Dividing by ``c_out`` keeps the raw network's error near unit scale, so ``train.grad_clip`` acts
as it does for the diffusion loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from medrecon.diffusion.guidance import GuidanceConfig, guided_denoiser
from medrecon.diffusion.precond import EDMPrecond
from medrecon.diffusion.tensors import Generators
from medrecon.physics.base import Measurement, Task

#: The noise level at which a regression model evaluates its preconditioned network (with a zero input).
#: Part of what ``objective=regression`` means in a checkpoint: changing it changes what stored models compute.
REGRESSION_SIGMA = 10.0
NORMS = ("l1", "l2")
#: The measurement guidance a one-evaluation estimate can take (DPS steers a sampling chain).
REGRESSION_GUIDANCE = ("none", "dc")


def regression_output(precond: EDMPrecond, cond: Tensor) -> Tensor:
    """``x0_hat = D(0, REGRESSION_SIGMA, cond)`` ``(B, image_channels, *S)`` float32 for conditions ``cond``
    ``(B, cond_channels, *S)``."""
    x = cond.new_zeros((cond.shape[0], precond.image_channels, *cond.shape[2:]), dtype=torch.float32)
    return precond(x, REGRESSION_SIGMA, cond)


@dataclass(frozen=True)
class RegressionLoss:
    """Per-sample supervised loss of the condition-to-image map (``objective=regression``).

    Attributes:
        sigma_data: must match the preconditioner's (it is stored as the model's ``sigma_data``).
        norm: ``l1`` (fastMRI's U-Net baseline) or ``l2`` (the MMSE estimate); see the module docstring.
    """

    sigma_data: float = 0.5
    norm: str = "l1"

    def __post_init__(self) -> None:
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data!r}")
        if self.norm not in NORMS:
            raise ValueError(f"regression norm {self.norm!r} is not one of {', '.join(NORMS)}")

    def __call__(
        self, precond: EDMPrecond, x0: Tensor, cond: Tensor | None, generator: Generators = None
    ) -> Tensor:
        """Args (the ``EDMLoss`` calling convention):
            precond: the network being trained (preconditioned).
            x0: clean (encoded) images ``(B, C, *S)``.
            cond: conditions ``(B, cond_channels, *S)``; required (a regression needs its input).
            generator: unused (the loss draws nothing: the randomness is in the task's degradation).

        Returns:
            ``(B,)`` float32: the error in the raw network's units (``/ c_out``), its absolute value (``l1``)
            or square (``l2``) averaged over each sample's channels and voxels. Reduce with ``.mean()``.

        Raises:
            ValueError: ``cond`` is ``None``.
        """
        if cond is None:
            raise ValueError("a regression model maps a condition to the image: cond must be given")
        x0 = x0.float()
        c_out = REGRESSION_SIGMA * self.sigma_data / (REGRESSION_SIGMA**2 + self.sigma_data**2) ** 0.5
        error = (regression_output(precond, cond) - x0) / c_out
        per_voxel = error.abs() if self.norm == "l1" else error.square()
        return per_voxel.flatten(1).mean(1)


def regression_guidance(guidance: GuidanceConfig | None) -> tuple[GuidanceConfig | None, str | None]:
    """The measurement guidance a regression model runs with, and a note when it is not the one asked for.

    ``none`` and ``dc`` apply as they are; ``dps`` (a gradient drift along a sampling chain) has nothing to
    steer in one evaluation, so the estimate runs without measurement guidance and the note says so.
    """
    if guidance is None or guidance.name in REGRESSION_GUIDANCE:
        return guidance, None
    note = (
        f"guidance={guidance.name} steers a sampling chain; the regression model's one evaluation runs "
        "with guidance=none (use guidance=dc for data consistency)"
    )
    return GuidanceConfig(name="none"), note


def regression_estimate(
    precond: EDMPrecond,
    task: Task,
    meas: Measurement,
    guidance: GuidanceConfig | None = None,
    *,
    cond: Tensor | None = None,
) -> Tensor:
    """The regression model's reconstruction of ``B`` measurements: one network evaluation, then the
    measurement guidance (``dc``: ``task.project`` with the same noise-aware weight the mmse sampler's first
    evaluation uses, so ``supervised`` and ``sampler=mmse sampler.steps=1`` are post-processed alike).

    Args:
        precond: a regression model (eval mode, on the measurement's device).
        task: the measurement model; ``task.condition(meas)`` fixes the output grid.
        meas: ``B`` measurements.
        guidance: ``none`` or ``dc`` (``None`` means ``none``).
        cond: a precomputed condition ``(B, cond_channels, *S)`` (2.5D context) instead of
            ``task.condition(meas)``.

    Returns:
        ``(B, image_channels, *S)`` float32, encoded intensities.

    Raises:
        ValueError: ``guidance=dps`` (it steers a sampling chain; a one-evaluation estimate has none).
    """
    if guidance is not None and guidance.name not in REGRESSION_GUIDANCE:
        raise ValueError(
            f"guidance={guidance.name} does not apply to a regression model (one network evaluation); "
            f"use one of {', '.join(REGRESSION_GUIDANCE)}"
        )
    with torch.no_grad():
        cond = task.condition(meas) if cond is None else cond
        denoiser = guided_denoiser(precond, task, meas, guidance, cond=cond)
        x = cond.new_zeros((cond.shape[0], precond.image_channels, *cond.shape[2:]), dtype=torch.float32)
        return denoiser(x, torch.full((x.shape[0],), REGRESSION_SIGMA, device=x.device))


__all__ = [
    "NORMS",
    "REGRESSION_GUIDANCE",
    "REGRESSION_SIGMA",
    "RegressionLoss",
    "regression_estimate",
    "regression_guidance",
    "regression_output",
]
