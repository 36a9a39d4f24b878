"""MRI task details: coil maps, conditions, and measurements built from fastMRI-layout k-space."""

import h5py
import numpy as np
import pytest
import torch

from medrecon.physics import (
    EquispacedMaskFunc,
    MRITask,
    build_task,
    fft2c,
    measurement_from_kspace,
    simulate_coil_maps,
)


def test_simulated_maps_are_normalised_smooth_and_distinct():
    maps = simulate_coil_maps(6, (15, 21))
    assert maps.shape == (6, 15, 21) and maps.dtype == torch.complex64
    assert torch.allclose(maps.abs().pow(2).sum(0), torch.ones(15, 21), atol=1e-5)
    assert not torch.allclose(maps[0].abs(), maps[3].abs(), atol=0.05)
    # smooth: neighbouring pixels differ by little
    assert (maps[:, 1:] - maps[:, :-1]).abs().max() < 0.2
    with pytest.raises(ValueError, match="coils"):
        simulate_coil_maps(0, (4, 4))


def test_fully_sampled_multicoil_adjoint_recovers_image():
    task = MRITask(acceleration=4, coils=5)
    x = torch.rand(2, 1, 16, 20, dtype=torch.float64)
    params = task.sample_params(x.shape)
    full = type(params)(mask=None, maps=params.maps.to(torch.complex128))
    assert torch.allclose(task.adjoint(task.forward(x, full), full), x, atol=1e-6)
    assert task.forward(x, params).shape == (2, 5, 16, 20)


def test_condition_is_zero_filled_real_and_imaginary():
    task = build_task("mri_r4")
    x = torch.rand(2, 1, 15, 21) * 2 - 1
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    cond = task.condition(meas)
    z = task.adjoint_complex(meas.y, meas.params)
    assert cond.shape == (2, 2, 15, 21)
    assert torch.equal(cond[:, :1], z.real) and torch.equal(cond[:, 1:], z.imag)
    assert cond[:, 1].abs().max() > 0  # undersampling aliases into the imaginary part


def test_noise_only_on_sampled_entries():
    task = build_task("mri_r8", noise_std=0.1)
    x = torch.zeros(3, 1, 16, 40)
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    sampled = meas.params.mask.expand_as(meas.y.real) > 0
    assert torch.all(meas.y[~sampled] == 0)
    noise = meas.y[sampled]
    assert float(noise.real.std()) == pytest.approx(0.1, rel=0.15)
    assert float(noise.imag.std()) == pytest.approx(0.1, rel=0.15)
    assert torch.equal(meas.noise_std, torch.full((3,), 0.1))


def _write_fastmri_h5(path, kspace, mask):
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("mask", data=mask)
        f.attrs["acquisition"] = "CORPD_FBK"


def test_measurement_from_multicoil_h5(tmp_path):
    h, w, coils = 16, 40, 4
    x = torch.rand(3, 1, h, w, dtype=torch.float64)
    maps = simulate_coil_maps(coils, (h, w), dtype=torch.complex128)
    mask = EquispacedMaskFunc(0.08, 4)(w, torch.Generator().manual_seed(0))
    kspace = (fft2c(maps * x) * mask).to(torch.complex64).numpy()  # (slices, coils, H, W), masked
    _write_fastmri_h5(tmp_path / "file1.h5", kspace, mask.numpy().astype(bool))

    with h5py.File(tmp_path / "file1.h5", "r") as f:
        k = torch.from_numpy(np.asarray(f["kspace"]))
        file_mask = torch.from_numpy(np.asarray(f["mask"]))
    inferred = measurement_from_kspace(k)
    given = measurement_from_kspace(k, file_mask)
    for meas in (inferred, given):
        assert meas.y.shape == (3, coils, h, w) and meas.y.dtype == torch.complex64
        assert meas.params.mask.shape == (3, 1, 1, w)
        assert torch.equal(meas.params.mask[0, 0, 0], mask)
        assert meas.params.maps.shape == (3, coils, h, w)
        assert torch.equal(meas.noise_std, torch.zeros(3))
    maps_est = inferred.params.maps
    assert torch.allclose(maps_est.abs().pow(2).sum(1), torch.ones(3, h, w), atol=1e-4)
    task = MRITask(acceleration=4, coils=coils)
    zf = task.adjoint(inferred.y, inferred.params)
    assert zf.shape == (3, 1, h, w)
    assert torch.allclose(task.forward(zf, inferred.params), task.forward(zf, given.params))
    # the data-consistency step moves an estimate towards the measured k-space
    x0 = torch.zeros(3, 1, h, w)
    step = task.project(x0, inferred)
    r0 = (task.forward(x0, inferred.params) - inferred.y).norm()
    assert (task.forward(step, inferred.params) - inferred.y).norm() < r0


def test_measurement_from_singlecoil_kspace():
    x = torch.rand(2, 1, 15, 21, dtype=torch.float64)
    mask = EquispacedMaskFunc(0.08, 4)(21, torch.Generator().manual_seed(1))
    kspace = (fft2c(x[:, 0]) * mask).to(torch.complex64)  # fastMRI single-coil layout (slices, H, W)
    meas = measurement_from_kspace(kspace)
    assert meas.y.shape == (2, 1, 15, 21) and meas.params.maps is None
    task = build_task("mri_r4")
    px = task.project(torch.zeros(2, 1, 15, 21), meas)
    assert (task.forward(px, meas.params) - meas.y).abs().max() < 1e-5
    assert torch.allclose(task.project(x.float(), meas), x.float(), atol=1e-5)


def test_measurement_from_kspace_rejects_bad_input():
    with pytest.raises(ValueError, match="complex"):
        measurement_from_kspace(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="columns"):
        measurement_from_kspace(torch.ones(1, 2, 8, 8, dtype=torch.complex64), torch.ones(5))
    with pytest.raises(ValueError, match="centre line"):
        measurement_from_kspace(torch.zeros(1, 2, 8, 8, dtype=torch.complex64))
    task = MRITask()
    with pytest.raises(ValueError, match="coil maps"):
        task.adjoint(torch.zeros(1, 3, 8, 8, dtype=torch.complex64), task.sample_params((1, 1, 8, 8)))


def test_input_magnitude_uses_zero_level():
    task = build_task("mri_r4")
    z = torch.tensor([[-1.0 + 0.0j, -1.0 + 0.3j, 0.5 + 0.0j, -1.5 + 0.0j]])
    assert torch.allclose(task.magnitude(z), torch.tensor([[-1.0, -0.7, 0.5, -0.5]]))
