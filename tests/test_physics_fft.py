"""Centred orthonormal FFTs against NumPy, and the Hermitian mirror."""

import numpy as np
import pytest
import torch

from medrecon.physics.fft import fft2c, ifft2c, mirror


@pytest.mark.parametrize("shape", [(15, 21), (16, 20), (3, 15, 8)])
def test_fft2c_matches_numpy(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    out = fft2c(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    ref_inv = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x)).numpy(), ref_inv, rtol=0, atol=1e-12)


def test_fft2c_on_other_axes_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 9, 4)) + 0j
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(x, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1)
    )
    np.testing.assert_allclose(fft2c(torch.from_numpy(x), dim=(-3, -2)).numpy(), ref, atol=1e-12)


def test_fft2c_is_unitary_and_inverted():
    x = torch.randn(2, 3, 15, 21, dtype=torch.complex128)
    k = fft2c(x)
    assert torch.allclose(k.norm(), x.norm())
    assert torch.allclose(ifft2c(k), x, atol=1e-12)
    # zero frequency at (H // 2, W // 2)
    ones = torch.ones(15, 21, dtype=torch.complex128)
    peak = fft2c(ones).abs()
    assert peak[7, 10] == pytest.approx(np.sqrt(15 * 21))
    assert peak.sum() == pytest.approx(np.sqrt(15 * 21))


@pytest.mark.parametrize("shape", [(15, 21), (16, 20), (15, 20)])
def test_mirror_gives_hermitian_symmetry_of_real_images(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    k = fft2c(x.to(torch.complex128))
    assert torch.allclose(mirror(k).conj(), k, atol=1e-12)
    assert torch.equal(mirror(mirror(k)), k)
