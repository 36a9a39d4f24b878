"""Guidance wrappers: data consistency, DPS (per-sample residuals), classifier-free guidance, configs.

The measurement model is a toy written here (2x area downsampling, ``A = avg_pool2d(., 2)``) so these tests do
not depend on ``medrecon.physics``; the prior is Gaussian N(0, s^2) per pixel with its exact denoiser.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medrecon.diffusion import (
    EDMPrecond,
    GuidanceConfig,
    build_sampler,
    cfg,
    conditional_denoiser,
    data_consistency,
    dps,
    guided_denoiser,
    unconditional_denoiser,
)
from medrecon.diffusion.guidance import residual_norm, x0_error_std
from medrecon.nn import UNet
from medrecon.physics.base import Measurement, OperatorParams, Task

CONF = Path(__file__).resolve().parents[1] / "conf" / "guidance"
S = 0.5


class Downsample2x(Task):
    """y = 2x2 block average of x + Gaussian noise; A A^T = I / 4, so A^+ = 4 A^T = nearest upsampling."""

    name = "toy_down2"

    def __init__(self, noise_std: float = 0.01) -> None:
        self.noise_std = noise_std

    def forward(self, x, params):
        return F.avg_pool2d(x, 2)

    def adjoint(self, y, params):
        return F.interpolate(y, scale_factor=2, mode="nearest") / 4

    def degrade(self, x, generator=None):
        y = self.forward(x, OperatorParams())
        y = y + self.noise_std * torch.randn(y.shape, generator=generator)
        return Measurement(y, OperatorParams(), torch.full((x.shape[0],), self.noise_std))

    def condition(self, meas):
        return F.interpolate(meas.y, scale_factor=2, mode="nearest")

    def project(self, x, meas, tau=None):
        # the contract's noise-aware step: weight t^2 / (t^2 + noise^2), t^2 = var(A e) = tau^2 / 4
        tau = torch.as_tensor(self.dc_tau if tau is None else tau, dtype=x.dtype).reshape(-1)
        t2, n2 = tau**2 / 4, meas.noise_std.to(x.dtype) ** 2
        w = torch.where(n2 == 0, torch.ones_like(t2 * n2), t2 / (t2 + n2)).reshape(-1, 1, 1, 1)
        return x + w * 4 * self.adjoint(meas.y - self.forward(x, meas.params), meas.params)


def gaussian_denoiser(x, sigma):
    return S**2 / (S**2 + sigma.reshape(-1, 1, 1, 1) ** 2) * x


def make_problem(noise_std: float):
    g = torch.Generator().manual_seed(0)
    task = Downsample2x(noise_std=noise_std)
    x_true = S * torch.randn(6, 1, 8, 8, generator=g)
    meas = task.degrade(x_true, g)
    noise = torch.randn(x_true.shape, generator=g)
    # E||n|| for the 16 measured values: the residual a sample consistent with the measurement keeps
    noise_level = noise_std * meas.y[0].numel() ** 0.5
    return task, meas, noise, noise_level


@pytest.fixture
def problem():
    return make_problem(0.01)


def test_toy_task_is_a_valid_linear_operator():
    task = Downsample2x()
    x, y = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)
    lhs = (task.forward(x, OperatorParams()) * y).sum()
    rhs = (x * task.adjoint(y, OperatorParams())).sum()
    torch.testing.assert_close(lhs, rhs)


def test_unguided_samples_ignore_the_measurement(problem):
    task, meas, noise, noise_level = problem
    out = build_sampler("dpmpp", 20).run(gaussian_denoiser, noise)
    assert (residual_norm(task, out, meas) > 10 * noise_level).all()


@pytest.mark.parametrize("name", ["ddim", "dpmpp"])
@pytest.mark.parametrize("sigma_data", [None, S])
def test_data_consistency_meets_noise_free_measurements_exactly(name, sigma_data):
    task, meas, noise, _ = make_problem(0.0)
    den = data_consistency(gaussian_denoiser, task, meas, sigma_data=sigma_data)
    out = build_sampler(name, 20).run(den, noise, generator=torch.Generator().manual_seed(0))
    assert (residual_norm(task, out, meas) < 1e-5).all()


@pytest.mark.parametrize("name", ["ddim", "dpmpp"])
def test_noise_aware_data_consistency_fits_noisy_measurements_to_the_noise_level(name):
    # an exact posterior sample keeps E||y - A x|| ~= the noise level here (prior variance of A x is 25x the
    # noise variance); the per-step weight with tau = x0_error_std(sigma) lands there instead of fitting the
    # noise (measured: ddim 0.77-1.09, dpmpp 0.99-1.39 times the noise level)
    task, meas, noise, noise_level = make_problem(0.05)
    den = data_consistency(gaussian_denoiser, task, meas, sigma_data=S)
    out = build_sampler(name, 20).run(den, noise, generator=torch.Generator().manual_seed(0))
    ratio = residual_norm(task, out, meas) / noise_level
    assert ((ratio > 0.5) & (ratio < 1.6)).all()
    assert 0.7 < ratio.mean() < 1.3


@pytest.mark.parametrize("name", ["ddim", "dpmpp"])
def test_dps_samples_satisfy_the_measurement_within_the_noise_level(problem, name):
    # DPS needs enough steps: with 20 steps and this scale the explicit guidance step overshoots (residual
    # about 0.3-0.5 for both ddim and dpmpp); at 50 steps it settles below the noise level
    task, meas, noise, noise_level = problem
    unguided = build_sampler(name, 50).run(gaussian_denoiser, noise)
    guided = build_sampler(name, 50).run(dps(gaussian_denoiser, task, meas, scale=100.0), noise)
    r = residual_norm(task, guided, meas)
    assert (r < noise_level).all()
    assert (r < 0.05 * residual_norm(task, unguided, meas)).all()


def test_dps_residual_is_per_sample(problem):
    task, meas, noise, _ = problem
    x = 2.0 * noise
    sigma = torch.full((6,), 1.5)
    batched = dps(gaussian_denoiser, task, meas, scale=5.0)(x, sigma)
    # each item alone gives the same answer: no residual norm is shared across the batch
    for b in (0, 3):
        alone = dps(gaussian_denoiser, task, meas.index(slice(b, b + 1)), scale=5.0)(
            x[b : b + 1], sigma[b : b + 1]
        )
        torch.testing.assert_close(batched[b : b + 1], alone, rtol=1e-6, atol=1e-7)
    # an item that is already consistent is not moved by the other items' (large) residuals
    identity = lambda x, sigma: x  # noqa: E731
    x_true = torch.randn(2, 1, 8, 8)
    exact = Measurement(task.forward(x_true, OperatorParams()), OperatorParams(), torch.zeros(2))
    x_mixed = torch.stack([x_true[0], x_true[1] + 3.0])
    out = dps(identity, task, exact, scale=5.0)(x_mixed, torch.ones(2))
    torch.testing.assert_close(out[0], x_true[0], rtol=0, atol=0)
    assert torch.isfinite(out).all() and not torch.allclose(out[1], x_mixed[1])


def tiny_precond() -> EDMPrecond:
    net = UNet(2, 2, 1, channels=(8, 16), attention_levels=(False, True), num_heads=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return EDMPrecond(net, 1, 1).eval()


def test_cfg_scale_one_is_exactly_the_conditional_model(problem):
    task, meas, noise, _ = problem
    precond = tiny_precond()
    x, sigma = noise * 2.0, torch.full((6,), 2.0)
    cond = task.condition(meas)
    with torch.no_grad():
        d_c = precond(x, sigma, cond)
        d_u = precond(x, sigma, None)
        assert torch.equal(guided_denoiser(precond, task, meas, None, cfg_scale=1.0)(x, sigma), d_c)
        assert torch.equal(
            cfg(conditional_denoiser(precond, cond), unconditional_denoiser(precond), 0.0)(x, sigma), d_u
        )
        two = guided_denoiser(precond, task, meas, GuidanceConfig("none"), cfg_scale=2.0)(x, sigma)
    torch.testing.assert_close(two, d_u + 2.0 * (d_c - d_u))
    assert not torch.allclose(two, d_c)
    with pytest.raises(ValueError, match="cfg scale"):
        cfg(gaussian_denoiser, gaussian_denoiser, -1.0)


def test_guided_denoiser_composes_cfg_and_measurement_guidance(problem):
    task, meas, noise, _ = problem
    precond = tiny_precond()
    x, sigma = noise, torch.full((6,), 0.5)
    with torch.no_grad():
        out = guided_denoiser(precond, task, meas, GuidanceConfig("dc"), cfg_scale=1.5)(x, sigma)
        base = cfg(conditional_denoiser(precond, task.condition(meas)), unconditional_denoiser(precond), 1.5)
        # dc is noise-aware with the preconditioner's sigma_data: tau = c_out(sigma)
        expected = task.project(base(x, sigma), meas, tau=x0_error_std(sigma, precond.sigma_data))
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, task.project(base(x, sigma), meas, tau=10.0))


def test_guidance_config_validation_and_wrap(problem):
    task, meas, _, _ = problem
    assert GuidanceConfig("none").wrap(gaussian_denoiser, task, meas) is gaussian_denoiser
    with pytest.raises(ValueError, match="none, dc, dps"):
        GuidanceConfig("langevin")
    with pytest.raises(ValueError, match="scale"):
        GuidanceConfig("dps", scale=-1.0)


@pytest.mark.parametrize("name", ["none", "dc", "dps"])
def test_guidance_yaml_instantiates(problem, name):
    task, meas, noise, _ = problem
    guidance = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(guidance, GuidanceConfig) and guidance.name == name
    out = build_sampler("ddim", 4).run(guidance.wrap(gaussian_denoiser, task, meas), noise)
    assert out.shape == noise.shape and torch.isfinite(out).all()
