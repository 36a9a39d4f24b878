"""Adjointness <A x, y> = <x, A^H y> of every operator, built from every conf/task yaml, in 2D and 3D."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medrecon.physics import MRITask, OperatorParams, Task

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
NAMES = ["denoise", "sr2x", "sr4x", "thick_slices", "mri_r4", "mri_r8"]


def load_task(name: str, **overrides) -> Task:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return instantiate(cfg)


def image_shape(name: str, spatial_dims: int) -> tuple[int, ...]:
    if name.startswith("mri"):
        return (2, 1, 15, 21) if spatial_dims == 2 else (2, 1, 15, 21, 3)
    if name == "denoise":
        return (2, 1, 15, 21) if spatial_dims == 2 else (2, 1, 7, 9, 5)
    if name == "thick_slices":
        return (2, 1, 12, 20) if spatial_dims == 2 else (2, 1, 7, 9, 8)
    return (2, 1, 12, 20) if spatial_dims == 2 else (2, 1, 8, 12, 5)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).real.sum() if a.is_complex() else (a * b).sum()


def params64(params: OperatorParams) -> OperatorParams:
    maps = None if params.maps is None else params.maps.to(torch.complex128)
    mask = None if params.mask is None else params.mask.to(torch.float64)
    return OperatorParams(mask=mask, maps=maps)


CASES = [(n, d, c) for n in NAMES for d in (2, 3) for c in ((1, 4) if n.startswith("mri") else (1,))]


@pytest.mark.parametrize(("name", "spatial_dims", "coils"), CASES)
def test_adjointness(name, spatial_dims, coils):
    overrides = {"spatial_dims": spatial_dims}
    if coils > 1:
        overrides["coils"] = coils
    task = load_task(name, **overrides)
    shape = image_shape(name, spatial_dims)
    gen = torch.Generator().manual_seed(0)
    params = params64(task.sample_params(shape, gen))
    x = torch.randn(shape, dtype=torch.float64, generator=gen)
    ax = task.forward(x, params)
    y = torch.randn(ax.shape, dtype=ax.dtype, generator=gen)
    aty = task.adjoint(y, params)
    assert aty.shape == x.shape and not aty.is_complex()
    lhs, rhs = inner(ax, y), inner(x, aty)
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
    if isinstance(task, MRITask):  # the complex adjoint for complex images
        z = torch.randn(shape, dtype=torch.complex128, generator=gen)
        lhs_c = (task.forward(z, params).conj() * y).sum()
        rhs_c = (z.conj() * task.adjoint_complex(y, params)).sum()
        assert abs(lhs_c - rhs_c) <= 1e-10 * abs(lhs_c)


@pytest.mark.parametrize("name", NAMES)
def test_adjointness_float32(name):
    task = load_task(name)
    shape = image_shape(name, 2)
    gen = torch.Generator().manual_seed(1)
    params = task.sample_params(shape, gen)
    x = torch.randn(shape, generator=gen)
    ax = task.forward(x, params)
    y = torch.randn(ax.shape, dtype=ax.dtype, generator=gen)
    lhs, rhs = inner(ax, y).double(), inner(x, task.adjoint(y, params)).double()
    # relative to the Cauchy-Schwarz scale: the inner product itself may cancel to near zero
    assert abs(lhs - rhs) <= 1e-5 * ax.norm().double() * y.norm().double()


@pytest.mark.parametrize(("name", "spatial_dims"), [(n, d) for n in NAMES for d in (2, 3)])
def test_shapes_and_contract(name, spatial_dims):
    task = load_task(name, spatial_dims=spatial_dims)
    assert task.name == name and task.spatial_dims == spatial_dims and task.image_channels == 1
    shape = image_shape(name, spatial_dims)
    x = torch.rand(shape) * 2 - 1
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    assert meas.noise_std.shape == (shape[0],)
    assert meas.y.dtype in (torch.float32, torch.complex64)
    measured = tuple(n // s for n, s in zip(shape[2:], task.scale))
    assert tuple(meas.y.shape[2:]) == measured
    assert task.condition(meas).shape == (shape[0], task.cond_channels, *shape[2:])
    assert task.pinv(meas).shape == shape
    assert task.project(x, meas).shape == shape
    assert len(task.scale) == spatial_dims


def test_scale_and_axes():
    assert load_task("sr4x").scale == (4, 4)
    assert load_task("sr4x", spatial_dims=3).scale == (4, 4, 1)
    assert load_task("thick_slices", spatial_dims=3).scale == (1, 1, 4)
    assert load_task("thick_slices").scale == (1, 4)
    assert load_task("mri_r4").scale == (1, 1)


@pytest.mark.parametrize("name", NAMES)
def test_degrade_is_seeded_and_fresh_per_sample(name):
    task = load_task(name, **({"sigma": 0.1} if name == "denoise" else {"noise_std": 0.05}))
    x = torch.zeros(image_shape(name, 2)).repeat(2, 1, 1, 1)  # 4 identical images
    a = task.degrade(x, torch.Generator().manual_seed(3))
    b = task.degrade(x, torch.Generator().manual_seed(3))
    c = task.degrade(x, torch.Generator().manual_seed(4))
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    assert not torch.equal(a.y[0], a.y[1])  # fresh noise (and mask) per sample
    if a.params.mask is not None:
        assert len({tuple(m.flatten().tolist()) for m in a.params.mask}) > 1


def test_build_task_matches_hydra():
    from medrecon.physics import build_task

    for name in NAMES:
        a, b = build_task(name, spatial_dims=3), load_task(name, spatial_dims=3)
        assert type(a) is type(b) and vars(a).keys() == vars(b).keys()
        assert a.name == b.name and a.scale == b.scale
    with pytest.raises(ValueError, match="unknown task"):
        build_task("deblur")
    with pytest.raises(ValueError, match="_target_"):
        build_task({"_target_": "os.system"})


def test_invalid_options():
    from medrecon.physics import build_task

    with pytest.raises(ValueError, match="spatial_dims"):
        build_task("sr2x", spatial_dims=4)
    with pytest.raises(ValueError, match="2..5"):
        build_task("thick_slices", factor=7)
    with pytest.raises(ValueError, match="noise"):
        build_task("denoise", noise="poisson")
    with pytest.raises(ValueError, match="coils"):
        build_task("mri_r4", coils=0)
    with pytest.raises(ValueError, match="divisible"):
        build_task("sr4x").degrade(torch.zeros(1, 1, 10, 12))
    with pytest.raises(ValueError, match="image batch"):
        build_task("mri_r4").degrade(torch.zeros(1, 2, 16, 16))


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    task = load_task(name, **({} if name == "denoise" else {"noise_std": 0.01}))
    x = torch.rand(image_shape(name, 2))
    cpu = task.degrade(x, torch.Generator().manual_seed(0))
    gpu = task.degrade(x.cuda(), torch.Generator().manual_seed(0))
    assert gpu.y.is_cuda and gpu.noise_std.is_cuda
    assert torch.allclose(gpu.y.cpu(), cpu.y, atol=1e-5)
    assert torch.allclose(task.project(x.cuda(), gpu).cpu(), task.project(x, cpu), atol=1e-5)
    assert torch.allclose(task.condition(gpu).cpu(), task.condition(cpu), atol=1e-5)
