"""Classical baselines: registry, applicability, shapes in 2D/3D, and quality on a Shepp-Logan phantom."""

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.metrics import peak_signal_noise_ratio
from skimage.transform import resize

from medrecon.baselines import BASELINES, applicable_baselines, get_baseline
from medrecon.baselines.tv import default_lambda, grad, grad_adjoint, tv
from medrecon.physics import build_task

ALL = ["denoise", "sr2x", "sr4x", "thick_slices", "mri_r4", "mri_r8"]
EXPECTED = {
    "denoise": ["input", "tv", "nlm"],
    "sr2x": ["input", "bicubic", "tv"],
    "sr4x": ["input", "bicubic", "tv"],
    "thick_slices": ["input", "bicubic", "tv"],
    "mri_r4": ["input", "zero_filled", "tv"],
    "mri_r8": ["input", "zero_filled", "tv"],
}


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    """A 64x64 Shepp-Logan phantom encoded to [-1, 1], batch of 2: (2, 1, 64, 64)."""
    p = resize(shepp_logan_phantom(), (64, 64), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(p * 2 - 1)[None, None].repeat(2, 1, 1, 1)


def psnr(gt: torch.Tensor, pred: torch.Tensor) -> float:
    return peak_signal_noise_ratio(gt.numpy(), pred.numpy().astype(np.float32), data_range=2.0)


def test_registry():
    assert set(BASELINES) == {"input", "bicubic", "zero_filled", "tv", "nlm"}
    assert get_baseline("tv") is tv
    with pytest.raises(ValueError, match="unknown baseline 'bm3d'; choose one of .*'nlm'"):
        get_baseline("bm3d")


@pytest.mark.parametrize("name", ALL)
def test_applicability(name):
    task = build_task(name)
    assert applicable_baselines(task) == EXPECTED[name]
    meas = task.degrade(torch.zeros(1, 1, 16, 20))
    for baseline in set(BASELINES) - set(EXPECTED[name]):
        with pytest.raises(ValueError, match=f"does not apply to task '{name}'"):
            BASELINES[baseline](task, meas)


@pytest.mark.parametrize(("name", "spatial_dims"), [(n, d) for n in ALL for d in (2, 3)])
def test_output_grid(name, spatial_dims):
    task = build_task(name, spatial_dims=spatial_dims)
    shape = (2, 1, 16, 20) if spatial_dims == 2 else (1, 1, 8, 12, 4)
    x = torch.rand(shape) * 2 - 1
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    for baseline in applicable_baselines(task):
        kw = {"iters": 5} if baseline == "tv" else {}
        out = BASELINES[baseline](task, meas, **kw)
        assert out.shape == shape and out.dtype == torch.float32, baseline
        assert torch.isfinite(out).all()


def test_input_is_area_consistent_for_sr():
    task = build_task("sr4x")
    x = torch.rand(1, 1, 16, 20)
    meas = task.degrade(x)
    up = get_baseline("input")(task, meas)
    assert torch.allclose(task.forward(up, meas.params), meas.y, atol=1e-6)
    assert torch.equal(get_baseline("bicubic")(task, meas), task.condition(meas))


def test_grad_adjoint():
    gen = torch.Generator().manual_seed(0)
    for shape in [(2, 1, 7, 9), (1, 1, 5, 6, 7)]:
        x = torch.randn(shape, dtype=torch.float64, generator=gen)
        p = torch.randn((len(shape) - 2, *shape), dtype=torch.float64, generator=gen)
        lhs, rhs = (grad(x) * p).sum(), (x * grad_adjoint(p)).sum()
        assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_default_lambdas_documented_values():
    assert default_lambda(build_task("denoise", sigma=0.2)) == pytest.approx(0.14)
    assert default_lambda(build_task("mri_r4")) == pytest.approx(0.01)
    assert default_lambda(build_task("mri_r8")) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="lam"):
        tv(build_task("sr2x"), build_task("sr2x").degrade(torch.zeros(1, 1, 4, 4)), lam=-1.0)


def test_tv_beats_zero_filled_mri(phantom):
    task = build_task("mri_r4")
    meas = task.degrade(phantom, torch.Generator().manual_seed(0))
    zf = psnr(phantom, get_baseline("zero_filled")(task, meas))
    rec = psnr(phantom, tv(task, meas))
    assert rec > zf + 3.0


def test_tv_improves_sr_and_denoising(phantom):
    sr = build_task("sr2x")
    meas = sr.degrade(phantom)
    assert psnr(phantom, tv(sr, meas)) > psnr(phantom, get_baseline("input")(sr, meas)) + 1.0
    dn = build_task("denoise", sigma=0.1)
    meas = dn.degrade(phantom, torch.Generator().manual_seed(0))
    noisy = psnr(phantom, meas.y)
    assert psnr(phantom, tv(dn, meas)) > noisy + 3.0
    assert psnr(phantom, get_baseline("nlm")(dn, meas)) > noisy + 3.0


def test_nlm_is_given_the_tasks_noise_level(phantom):
    """Fine texture fools the wavelet noise estimate (it reads the texture as noise and NLM erases it); the
    baseline is told the task's sigma, as TV is, and keeps it."""
    from medrecon.baselines.nlm import estimate_sigma, nlm_slice

    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    x = phantom[:1] + 0.1 * ((yy + xx) % 2 * 2 - 1).float()
    task = build_task("denoise", sigma=0.02)
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    assert estimate_sigma(meas.y[0, 0].numpy()) > 5 * task.sigma
    guessed = torch.from_numpy(nlm_slice(meas.y[0, 0].numpy()))[None, None]
    told = get_baseline("nlm")(task, meas)
    assert psnr(x, told) > psnr(x, guessed) + 3.0


def test_nlm_3d_slicewise():
    task = build_task("denoise", spatial_dims=3, sigma=0.1)
    x = torch.zeros(1, 1, 24, 24, 3)
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    out = get_baseline("nlm")(task, meas)
    assert out.shape == x.shape
    assert out.std() < 0.5 * meas.y.std()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL)
def test_baselines_on_cuda(name, phantom):
    task = build_task(name)
    x = phantom.cuda()
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    for baseline in applicable_baselines(task):
        out = BASELINES[baseline](task, meas)
        assert out.is_cuda and out.shape == x.shape
    cpu = tv(task, meas.to("cpu"), iters=20)
    assert torch.allclose(tv(task, meas, iters=20).cpu(), cpu, atol=1e-4)
