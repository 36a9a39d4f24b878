"""Samplers against known answers.

For data distributed N(mu, s^2) per pixel the exact denoiser is
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)``, and the probability-flow ODE maps ``x_T = sigma_max n``
to ``mu + s / sqrt(s^2 + sigma_max^2) (x_T - mu)``.

Measured std error with 4096 samples and this seed (Karras rho = 7, sigma in [0.002, 80]), for the pixels with
s = 0.5 / s = 0.2: DDPM-1000 -1.3 % / +1.7 % (sampling error only), DDIM-50 -6.7 % / -5.0 %,
DPM-Solver++(2M)-20 +3.8 % / +7.8 % (+0.8 % / +4.1 % at 30 steps, +15 % at 10). Those are discretisation
biases of the solvers, not noise, so the tolerances are set from them: mean within 0.03; std within 3 %
(DDPM-1000) and 10 % (DDIM-50, DPM++-20). The ODE-map test checks each solver's order of convergence.
"""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medrecon.diffusion import EDMPrecond, build_sampler, conditional_denoiser, karras_sigmas, randn_like
from medrecon.diffusion.samplers import (
    DEFAULT_STEPS,
    SamplerConfig,
    ancestral_step,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_mmse,
)
from medrecon.nn import UNet

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"
MU = torch.tensor([0.3, -0.5]).reshape(1, 2, 1, 1)
S = torch.tensor([0.5, 0.2]).reshape(1, 2, 1, 1)


def gaussian_denoiser(x, sigma):
    s2 = S**2
    return MU + s2 / (s2 + sigma.reshape(-1, 1, 1, 1) ** 2) * (x - MU)


def exact_ode_map(noise, sigma_max=80.0):
    return MU + S / (S**2 + sigma_max**2).sqrt() * (noise * sigma_max - MU)


@pytest.mark.parametrize(
    ("name", "steps", "std_tol"), [("ddpm", 1000, 0.03), ("ddim", 50, 0.10), ("dpmpp", 20, 0.10)]
)
def test_gaussian_data_mean_and_std_are_reproduced(name, steps, std_tol):
    noise = torch.randn(4096, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    out = build_sampler(name, steps).run(gaussian_denoiser, noise, generator=torch.Generator().manual_seed(1))
    mean, std = out.mean((0, 2, 3)), out.std((0, 2, 3))
    torch.testing.assert_close(mean, MU.flatten(), atol=0.03, rtol=0)
    torch.testing.assert_close(std, S.flatten(), atol=0, rtol=std_tol)


def test_deterministic_solvers_converge_to_the_exact_ode_map_at_their_order():
    noise = torch.linspace(-2, 2, 9).reshape(9, 1, 1, 1).expand(9, 2, 1, 1)
    exact = exact_ode_map(noise)

    def err(name, steps):
        return (build_sampler(name, steps).run(gaussian_denoiser, noise) - exact).abs().max().item()

    assert err("ddim", 50) < 0.15 and err("dpmpp", 20) < 0.15
    assert err("ddim", 100) < 0.6 * err("ddim", 50)  # first order: about halves
    assert err("dpmpp", 40) < 0.35 * err("dpmpp", 20)  # second order: about a quarter
    assert err("dpmpp", 80) < 0.02


def test_ddim_with_eta_one_is_the_ddpm_posterior_step():
    sigmas = karras_sigmas(30)
    x = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0)) * 80
    a = sample_ddpm(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3))
    b = sample_ddim(gaussian_denoiser, x, sigmas, generator=torch.Generator().manual_seed(3), eta=1.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    down, up = ancestral_step(2.0, 1.0, eta=1.0)
    assert math.isclose(down**2 + up**2, 1.0) and math.isclose(
        down, 0.5
    )  # sigma_down = sigma_to^2 / sigma_from


@pytest.mark.parametrize("fn", [sample_ddpm, sample_ddim, sample_dpmpp_2m])
def test_per_item_generators_make_samples_independent_of_batch_order(fn):
    seeds = [11, 22, 33]
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 80
    sigmas = karras_sigmas(8)
    kw = {"eta": 0.5} if fn is sample_ddim else {}
    ref = fn(gaussian_denoiser, x, sigmas, generator=[torch.Generator().manual_seed(s) for s in seeds], **kw)
    order = [2, 0, 1]
    out = fn(
        gaussian_denoiser,
        x[order],
        sigmas,
        generator=[torch.Generator().manual_seed(seeds[i]) for i in order],
        **kw,
    )
    torch.testing.assert_close(out, ref[order])
    alone = fn(gaussian_denoiser, x[1:2], sigmas, generator=[torch.Generator().manual_seed(22)], **kw)
    torch.testing.assert_close(alone, ref[1:2])


def test_randn_like_draws_each_row_from_its_own_generator():
    x = torch.empty(2, 3, 5)
    rows = randn_like(x, [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    torch.testing.assert_close(rows[1], torch.randn(3, 5, generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="one per item"):
        randn_like(x, [torch.Generator()])


def test_callback_sees_every_step():
    seen = []
    build_sampler("ddim", 7).run(
        gaussian_denoiser, torch.randn(2, 2, 1, 1), callback=lambda i, s, x, d: seen.append((i, s))
    )
    assert [i for i, _ in seen] == list(range(7))
    assert seen[0][1] == pytest.approx(80.0) and seen[-1][1] == pytest.approx(0.002)


def test_golden_dpmpp_loop_with_a_seeded_tiny_unet():
    """Pins a full sampling loop (CPU float32; recorded with torch 2.13). Update only for intended changes."""
    torch.manual_seed(0)
    net = UNet(2, 2, 1, channels=(8, 16), attention_levels=(False, True), num_heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0).add_(torch.randn(p.shape) * 0.1)
    precond = EDMPrecond(net, 1, 1).eval()
    g = torch.Generator().manual_seed(1234)
    cond = torch.randn(1, 1, 8, 8, generator=g)
    noise = torch.randn(1, 1, 8, 8, generator=g)
    out = build_sampler("dpmpp", 5).run(conditional_denoiser(precond, cond), noise)
    golden = torch.tensor([0.41892996, -0.13868852, -0.36393049, 0.16671543])
    torch.testing.assert_close(out.flatten()[[0, 9, 27, 63]], golden, atol=1e-4, rtol=0)
    assert out.sum().item() == pytest.approx(4.405088, abs=1e-3)


def test_sampler_config_defaults_and_validation():
    assert build_sampler("dpmpp").steps == DEFAULT_STEPS["dpmpp"] == 20
    assert build_sampler("ddim").steps == 50 and build_sampler("ddpm").steps == 1000
    assert build_sampler("ddim", 10).sigmas().shape == (11,)
    with pytest.raises(ValueError, match="ddpm, ddim, dpmpp"):
        build_sampler("euler")
    with pytest.raises(ValueError, match="steps"):
        build_sampler("ddim", 0)
    with pytest.raises(ValueError, match="only to sampler 'ddim'"):
        build_sampler("dpmpp", eta=0.5)
    with pytest.raises(ValueError, match="sigma_min"):
        build_sampler("ddim", sigma_min=100.0)
    with pytest.raises(ValueError, match="end with 0"):
        sample_ddim(gaussian_denoiser, torch.zeros(1, 2, 1, 1), [1.0, 0.5])


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp", "mmse"])
def test_sampler_yaml_instantiates(name):
    cfg = instantiate(OmegaConf.load(CONF / f"{name}.yaml"))
    assert isinstance(cfg, SamplerConfig) and cfg.name == name and cfg.steps == DEFAULT_STEPS[name]
    override = instantiate(OmegaConf.load(CONF / f"{name}.yaml"), steps=3)
    out = override.run(gaussian_denoiser, torch.randn(2, 2, 1, 1), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 2, 1, 1) and torch.isfinite(out).all()


def test_mmse_one_step_is_the_denoiser_at_sigma_max():
    """One evaluation: the (here exact) denoiser at sigma_max, i.e. E[x0 | x_sigma], close to the data mean."""
    noise = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    cfg = build_sampler("mmse", 1, sigma_max=10.0)
    torch.testing.assert_close(cfg.sigmas(), torch.tensor([10.0, 0.0], dtype=torch.float64))
    out = cfg.run(gaussian_denoiser, noise)
    torch.testing.assert_close(out, gaussian_denoiser(noise * 10.0, torch.full((64,), 10.0)))
    # E[x0 | y] for Gaussian data: within s^2 / sigma^2 of the mean for |n| < 4
    assert (out - MU).abs().max() < 4 * 10 * (S**2).max() / 100 + 1e-6


def test_mmse_refinement_schedule_evaluations_and_determinism():
    cfg = build_sampler("mmse", 5, sigma_max=10.0, sigma_refine=0.2, rho=2.0)
    sigmas = cfg.sigmas()
    assert sigmas.shape == (6,) and sigmas[0] == 10.0 and sigmas[1] == pytest.approx(0.2) and sigmas[-1] == 0
    seen = []
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = cfg.run(gaussian_denoiser, noise, callback=lambda i, s, x, d: seen.append((i, s)))
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]  # steps == network evaluations
    assert [s for _, s in seen] == pytest.approx(sigmas[:-1].tolist())
    # renoise=0 is deterministic: no generator is consumed, any generator gives the same answer
    again = cfg.run(gaussian_denoiser, noise, generator=torch.Generator().manual_seed(99))
    torch.testing.assert_close(out, again)
    # the refinement integrates the probability-flow ODE from sigma_refine, started at the one-step estimate:
    # for Gaussian data that maps x to mu + s / sqrt(s^2 + sigma_refine^2) (x - mu) (DDIM: first-order error)
    start = gaussian_denoiser(noise * 10.0, torch.full((3,), 10.0))
    exact = MU + S / (S**2 + 0.2**2).sqrt() * (start - MU)
    torch.testing.assert_close(out, exact, atol=2e-3, rtol=0)


def test_mmse_renoise_draws_from_each_items_generator():
    cfg = build_sampler("mmse", 3, sigma_max=10.0, sigma_refine=0.3, renoise=1.0)
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(2))

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    a = cfg.run(gaussian_denoiser, noise, generator=gens(5, 6))
    b = cfg.run(gaussian_denoiser, noise.flip(0), generator=gens(6, 5))
    torch.testing.assert_close(a, b.flip(0))  # an item's draw depends on its own generator only
    c = cfg.run(gaussian_denoiser, noise, generator=gens(7, 8))
    assert not torch.allclose(a, c)  # fresh noise: different draws per seed


def test_mmse_options_are_validated():
    with pytest.raises(ValueError, match="sigma_refine"):
        build_sampler("mmse", 3, sigma_max=10.0, sigma_refine=20.0)
    with pytest.raises(ValueError, match="renoise"):
        build_sampler("mmse", 3, renoise=1.5)
    with pytest.raises(ValueError, match="renoise"):
        sample_mmse(gaussian_denoiser, torch.zeros(1, 2, 1, 1), [1.0, 0.5, 0.0], renoise=-1.0)
    assert build_sampler("mmse", 1, sigma_refine=50.0).steps == 1  # sigma_refine unused by one step
