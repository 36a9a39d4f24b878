"""Gaussian and Rician noise models of the denoising task."""

import math

import pytest
import torch

from medrecon.physics import build_task


def test_gaussian_noise_statistics():
    task = build_task("denoise", sigma=0.1)
    x = torch.full((4, 1, 64, 64), 0.3)
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    n = meas.y - x
    assert abs(float(n.mean())) < 0.005
    assert float(n.std()) == pytest.approx(0.1, rel=0.03)
    assert torch.equal(meas.noise_std, torch.full((4,), 0.1))
    assert torch.equal(task.condition(meas), meas.y) and torch.equal(task.forward(x, meas.params), x)


@pytest.mark.parametrize("zero_level", [0.0, -1.0])
def test_rician_background_is_rayleigh(zero_level):
    sigma = 0.1
    task = build_task("denoise", sigma=sigma, noise="rician", zero_level=zero_level)
    x = torch.full((4, 1, 64, 64), zero_level)  # zero signal
    y = task.degrade(x, torch.Generator().manual_seed(1)).y - zero_level
    assert torch.all(y >= 0)
    assert float(y.mean()) == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    assert float((y**2).mean()) == pytest.approx(2 * sigma**2, rel=0.03)  # E|n1 + i n2|^2 = 2 sigma^2


def test_rician_bright_signal_is_nearly_unbiased():
    sigma, signal = 0.05, 1.5
    task = build_task("denoise", sigma=sigma, noise="rician", zero_level=-1.0)
    x = torch.full((4, 1, 64, 64), signal - 1.0)
    y = task.degrade(x, torch.Generator().manual_seed(2)).y
    assert float(y.mean()) == pytest.approx(signal - 1.0 + sigma**2 / (2 * signal), abs=2e-3)
    assert float(y.std()) == pytest.approx(sigma, rel=0.05)


def test_3d_and_zero_sigma():
    task = build_task("denoise", sigma=0.0, spatial_dims=3)
    x = torch.rand(1, 1, 5, 6, 7)
    meas = task.degrade(x)
    assert torch.equal(meas.y, x)
    assert torch.equal(task.project(torch.zeros_like(x), meas), x)
