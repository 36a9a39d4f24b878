"""Posterior sampling: K draws per measurement -> mean and per-voxel std, per-measurement seeds.

The toy measurement model (written here, independent of ``medrecon.physics``) is a masked identity: a fixed
checkerboard of pixels is observed without noise, the rest is missing.
"""

import pytest
import torch

from medrecon.diffusion import EDMPrecond, GuidanceConfig, PosteriorResult, build_sampler, posterior_sample
from medrecon.nn import UNet
from medrecon.physics.base import Measurement, OperatorParams, Task


class MaskedIdentity(Task):
    name = "toy_inpaint"

    def sample_params(self, x_shape, generator=None, device="cpu"):
        h, w = x_shape[-2:]
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        mask = ((ii + jj) % 2 == 0).float().expand(x_shape[0], 1, h, w).to(device)
        return OperatorParams(mask=mask)

    def forward(self, x, params):
        return x * params.mask

    def adjoint(self, y, params):
        return y * params.mask

    def degrade(self, x, generator=None):
        params = self.sample_params(tuple(x.shape), generator, x.device)
        return Measurement(self.forward(x, params), params, torch.zeros(x.shape[0]))

    def condition(self, meas):
        return meas.y

    def project(self, x, meas, tau=None):  # noise-free: the exact projection whatever tau
        return meas.y * meas.params.mask + x * (1 - meas.params.mask)


@pytest.fixture(scope="module")
def setup():
    net = UNet(2, 2, 1, channels=(8, 16), attention_levels=(False, True), num_heads=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    precond = EDMPrecond(net, 1, 1).eval()
    task = MaskedIdentity()
    meas = task.degrade(torch.randn(3, 1, 10, 12, generator=g) * 0.5)
    return precond, task, meas


def test_shapes_and_single_sample_has_zero_std(setup):
    precond, task, meas = setup
    res = posterior_sample(precond, task, meas, build_sampler("dpmpp", 3), samples=1)
    assert isinstance(res, PosteriorResult)
    assert res.mean.shape == res.std.shape == (3, 1, 10, 12) and res.samples is None
    assert torch.count_nonzero(res.std) == 0


def test_k_samples_give_mean_std_and_dc_pins_the_measured_pixels(setup):
    precond, task, meas = setup
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    res = posterior_sample(
        precond,
        task,
        meas,
        build_sampler("dpmpp", 3),
        GuidanceConfig("dc"),
        samples=4,
        generators=gens,
        keep_samples=True,
    )
    assert res.samples.shape == (3, 4, 1, 10, 12)
    torch.testing.assert_close(res.mean, res.samples.mean(1))
    torch.testing.assert_close(res.std, res.samples.std(1))
    mask = meas.params.mask.bool()
    assert res.std[mask].abs().max() < 1e-6  # measured pixels agree across samples (= y) ...
    assert res.std[~mask].min() > 1e-4  # ... the missing ones carry the uncertainty
    torch.testing.assert_close(res.mean[mask], meas.y[mask])


def test_per_measurement_generators_make_results_independent_of_the_batch(setup):
    precond, task, meas = setup
    sampler = build_sampler("ddim", 3, eta=1.0)  # stochastic: every step draws noise
    both = posterior_sample(
        precond,
        task,
        meas,
        sampler,
        samples=2,
        generators=[torch.Generator().manual_seed(s) for s in (1, 2, 3)],
        keep_samples=True,
    )
    alone = posterior_sample(
        precond,
        task,
        meas.index(slice(2, 3)),
        sampler,
        samples=2,
        generators=[torch.Generator().manual_seed(3)],
        keep_samples=True,
    )
    torch.testing.assert_close(both.samples[2:], alone.samples, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both.samples[2, 0], both.samples[2, 1])  # the K draws differ


def test_precomputed_condition_replaces_task_condition(setup):
    precond, task, meas = setup
    sampler = build_sampler("dpmpp", 3)

    def run(cond):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
        return posterior_sample(precond, task, meas, sampler, samples=2, generators=gens, cond=cond).mean

    torch.testing.assert_close(run(task.condition(meas)), run(None))
    assert not torch.allclose(run(torch.zeros_like(meas.y)), run(None))
    with pytest.raises(ValueError, match="cond has 1 items"):
        run(meas.y[:1])


def test_validation(setup):
    precond, task, meas = setup
    with pytest.raises(ValueError, match="samples"):
        posterior_sample(precond, task, meas, build_sampler("dpmpp", 2), samples=0)
    with pytest.raises(ValueError, match="one per measurement"):
        posterior_sample(precond, task, meas, build_sampler("dpmpp", 2), generators=[torch.Generator()])
