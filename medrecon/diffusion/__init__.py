"""Diffusion: EDM preconditioning and loss, noise schedule, samplers, guidance wrappers, posterior statistics,
and the supervised regression baseline that shares the preconditioned network.

Torch only (no Hydra, no training imports). The contract between the pieces is the denoiser
``D(x (B, C, *S), sigma (B,)) -> x0_hat (B, C, *S)`` with the condition bound in advance.
"""

from medrecon.diffusion.guidance import (
    GuidanceConfig,
    cfg,
    conditional_denoiser,
    data_consistency,
    dps,
    guided_denoiser,
    unconditional_denoiser,
)
from medrecon.diffusion.loss import EDMLoss
from medrecon.diffusion.posterior import PosteriorResult, posterior_sample
from medrecon.diffusion.precond import EDMPrecond
from medrecon.diffusion.regression import RegressionLoss, regression_estimate
from medrecon.diffusion.samplers import (
    SamplerConfig,
    build_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)
from medrecon.diffusion.schedule import karras_sigmas
from medrecon.diffusion.tensors import append_dims, randn_like

__all__ = [
    "EDMLoss",
    "EDMPrecond",
    "GuidanceConfig",
    "PosteriorResult",
    "RegressionLoss",
    "SamplerConfig",
    "append_dims",
    "build_sampler",
    "cfg",
    "conditional_denoiser",
    "data_consistency",
    "dps",
    "guided_denoiser",
    "karras_sigmas",
    "posterior_sample",
    "randn_like",
    "regression_estimate",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "unconditional_denoiser",
]
