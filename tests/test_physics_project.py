"""Data consistency: exact, idempotent projection for noise-free data; noise-aware weighting otherwise."""

import pytest
import torch

from medrecon.physics import Measurement, build_task

EXACT = [
    ("denoise", {"sigma": 0.0}, (2, 1, 15, 21)),
    ("sr2x", {}, (2, 1, 12, 20)),
    ("sr4x", {}, (2, 1, 12, 20)),
    ("sr4x", {"spatial_dims": 3}, (2, 1, 8, 12, 5)),
    ("thick_slices", {}, (2, 1, 12, 20)),
    ("thick_slices", {"spatial_dims": 3, "factor": 3}, (2, 1, 7, 9, 6)),
    ("mri_r4", {}, (2, 1, 15, 21)),
    ("mri_r4", {"mask_type": "equispaced"}, (2, 1, 16, 20)),
    ("mri_r8", {}, (2, 1, 16, 21)),
    ("mri_r8", {"spatial_dims": 3}, (2, 1, 15, 20, 3)),
]


@pytest.mark.parametrize(("name", "overrides", "shape"), EXACT)
def test_noise_free_projection_is_exact_and_idempotent(name, overrides, shape):
    task = build_task(name, **overrides)
    gen = torch.Generator().manual_seed(0)
    x_true = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    meas = task.degrade(x_true, gen)
    assert torch.all(meas.noise_std == 0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    px = task.project(x, meas)
    assert px.dtype == x.dtype and not px.is_complex()
    scale = meas.y.abs().max()
    assert (task.forward(px, meas.params) - meas.y).abs().max() <= 1e-10 * scale  # A P(x) = y
    assert torch.allclose(task.project(px, meas), px, atol=1e-10)  # P(P(x)) = P(x)
    assert torch.allclose(task.project(x_true, meas), x_true, atol=1e-10)  # consistent images are fixed
    # orthogonal projection: the correction is orthogonal to the consistent direction x_true - P(x)
    assert abs(((x - px) * (x_true - px)).sum()) <= 1e-8 * x.norm() * x_true.norm()
    # pinv is the minimum-norm consistent image
    p0 = task.pinv(meas).double()
    assert (task.forward(p0, meas.params) - meas.y).abs().max() <= 1e-5 * scale
    assert p0.norm() <= x_true.norm() + 1e-6


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_multicoil_step_reduces_residual_and_keeps_consistent_images(spatial_dims):
    task = build_task("mri_r4", coils=4, spatial_dims=spatial_dims)
    shape = (2, 1, 16, 20) if spatial_dims == 2 else (2, 1, 16, 20, 3)
    gen = torch.Generator().manual_seed(0)
    x_true = torch.rand(shape, generator=gen) * 2 - 1
    meas = task.degrade(x_true, gen)
    x = torch.randn(shape, generator=gen)
    px = task.project(x, meas)

    def residual(z):
        return (task.forward(z, meas.params) - meas.y).norm()

    assert residual(px) < 0.8 * residual(x)
    assert residual(task.project(px, meas)) <= residual(px)
    assert torch.allclose(task.project(x_true, meas), x_true, atol=1e-5)


@pytest.mark.parametrize("name", ["denoise", "sr2x", "mri_r4"])
def test_noise_aware_weight(name):
    noisy = {"sigma": 0.2} if name == "denoise" else {"noise_std": 0.2}
    task = build_task(name, **noisy)
    shape = (3, 1, 16, 20)
    gen = torch.Generator().manual_seed(1)
    x_true = torch.rand(shape, generator=gen) * 2 - 1
    meas = task.degrade(x_true, gen)
    x = torch.zeros(shape)
    r0 = (task.forward(x, meas.params) - meas.y).norm()
    partial = task.project(x, meas, tau=0.2)
    r1 = (task.forward(partial, meas.params) - meas.y).norm()
    assert 0.05 * r0 < r1 < 0.95 * r0  # moves towards the data, not onto it
    # an estimate far less certain than the data gets (almost) the hard projection; a certain one stays
    loose = task.project(x, meas, tau=1e3)
    hard = task.project(x, Measurement(meas.y, meas.params, torch.zeros(3)))
    assert torch.allclose(loose, hard, atol=1e-5)
    assert task.project(x, meas, tau=1e-6).abs().max() < 1e-6
    # noise-free samples in the same batch are still projected exactly
    mixed = Measurement(meas.y, meas.params, torch.tensor([0.0, 0.2, 0.2]))
    px = task.project(torch.zeros(shape), mixed, tau=0.2)
    assert torch.allclose(px[0], hard[0], atol=1e-6)
    assert torch.allclose(px[1], partial[1], atol=1e-6) and not torch.allclose(px[1], hard[1], atol=1e-2)


def test_denoise_project_formula():
    task = build_task("denoise", sigma=0.1, dc_tau=0.1)
    x = torch.zeros(1, 1, 4, 4)
    meas = Measurement(torch.ones(1, 1, 4, 4), None, torch.tensor([0.1]))
    assert torch.allclose(task.project(x, meas), torch.full_like(x, 0.5))  # w = tau^2 / (tau^2 + sigma^2)
