"""``sampler.start``: the ``mmse`` refinement starting from a classical reconstruction instead of the model's
one-evaluation estimate (Chung et al. 2022), ``auto`` = TV for 2D MRI.

Checked: the sampler refines exactly the given start and skips the first evaluation; which start ``auto``
picks per task, sampler and objective, and the refusals; a diffusion method with a TV start evaluates its
network ``steps - 1`` times and is data-consistent; a blend hands its own TV over instead of solving it twice;
the evaluate report and the reconstruct resume key record what ``auto`` resolved to.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from medrecon.diffusion.samplers import SamplerConfig, sample_ddim, sample_mmse
from medrecon.physics.denoise import DenoiseTask
from medrecon.physics.mri import MRITask
from medrecon.physics.sr import SuperResolutionTask
from medrecon.recon.methods import resolve_start


class Counting:
    """A denoiser ``D(x, sigma) = 0.8 x`` that counts its evaluations."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 0.8 * x


def mmse(steps: int = 5, start: str = "auto") -> SamplerConfig:
    return SamplerConfig(name="mmse", steps=steps, sigma_max=10.0, rho=2.0, start=start)


# ------------------------------------------------------------------------------------------------ sampler
def test_mmse_refines_the_given_start_and_skips_the_first_evaluation():
    sigmas = mmse(5).sigmas()
    x = 10.0 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    start = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with_start, plain = Counting(), Counting()
    out = sample_mmse(with_start, x, sigmas, start=start)
    sample_mmse(plain, x, sigmas)
    assert with_start.calls == 4 and plain.calls == 5  # steps = 5: the first evaluation is not run
    expected = sample_ddim(Counting(), start, sigmas[1:])  # the refinement of the start itself, nothing else
    assert torch.equal(out, expected)
    assert not torch.allclose(out, sample_mmse(Counting(), x, sigmas))


def test_a_start_needs_a_refinement_of_the_right_shape():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="refinement"):
        sample_mmse(Counting(), x, [10.0, 0.0], start=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        sample_mmse(Counting(), x, mmse(3).sigmas(), start=torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="mmse with steps >= 2"):
        SamplerConfig(name="dpmpp", steps=10, start="tv")
    with pytest.raises(ValueError, match="mmse with steps >= 2"):
        mmse(1, "tv")
    with pytest.raises(ValueError, match="start must be a name"):
        mmse(5, "")
    SamplerConfig(name="dpmpp", steps=10, start="auto")  # auto and model are valid for every sampler
    with pytest.raises(ValueError, match="mmse"):
        SamplerConfig(name="dpmpp", steps=2).run(Counting(), x, start=x)


def test_the_shipped_mmse_config_starts_automatically():
    from medrecon.recon.setup import sampler_config

    assert sampler_config("mmse").start == "auto"


# ------------------------------------------------------------------------------------------------ resolve
def test_auto_starts_2d_mri_from_tv_and_every_other_model_from_its_own_estimate():
    mri = MRITask(4)
    assert resolve_start(mmse(5), mri) == "tv"
    assert resolve_start(mmse(5, "model"), mri) is None
    assert resolve_start(mmse(1), mri) is None  # no refinement: the model's estimate is the output
    assert resolve_start(SamplerConfig(name="dpmpp", steps=10, start="auto"), mri) is None
    assert resolve_start(mmse(5), MRITask(4, spatial_dims=3)) is None
    assert resolve_start(mmse(5), SuperResolutionTask(4)) is None  # measured: its own estimate is better
    assert resolve_start(mmse(5), DenoiseTask(0.05)) is None
    assert resolve_start(mmse(5), mri, objective="latent") is None
    assert resolve_start(None, mri) is None
    assert (
        resolve_start(mmse(5, "tv"), SuperResolutionTask(4)) == "tv"
    )  # asked for: any baseline that applies


def test_an_explicit_start_must_apply_to_the_task_and_the_model():
    with pytest.raises(ValueError, match="does not apply"):
        resolve_start(mmse(5, "nlm"), MRITask(4))
    with pytest.raises(ValueError, match="unknown|baseline"):
        resolve_start(mmse(5, "bm4d"), MRITask(4))
    with pytest.raises(ValueError, match="diffusion models"):
        resolve_start(mmse(5, "tv"), MRITask(4), objective="latent")


# ------------------------------------------------------------------------------------------------ methods
def _mri_model(tmp_path):
    from test_fastmri_roundtrip import mri_checkpoint

    from medrecon.checkpoint import load_checkpoint

    return load_checkpoint(str(mri_checkpoint(tmp_path / "mri.safetensors")), device="cpu")


def _measurement(task: MRITask, batch: int = 1):
    from test_blend import phantom

    x = phantom(batch, 32, seed=5)
    return x, task.degrade(x, torch.Generator().manual_seed(2))


def test_a_tv_start_saves_an_evaluation_and_stays_data_consistent(tmp_path):
    from medrecon.recon.methods import model_method

    loaded = _mri_model(tmp_path)
    task = loaded.task
    _, meas = _measurement(task)
    calls = {"n": 0}
    forward = loaded.precond.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    loaded.precond.forward = counted
    guidance = OmegaConf.create({"name": "dc"})
    from medrecon.recon.setup import guidance_config

    started = model_method(loaded, task, mmse(4), guidance_config(guidance), blend="none")
    assert started.start == "tv"
    out, _ = started(meas, None, [0])
    assert calls["n"] == 3  # steps - 1
    residual = task.forward(out, meas.params) - meas.y
    assert float(residual.abs().max()) < 1e-4  # the last estimate is projected onto the measurement
    calls["n"] = 0
    own = model_method(loaded, task, mmse(4, "model"), guidance_config(guidance), blend="none")
    assert own.start is None
    own_out, _ = own(meas, None, [0])
    assert calls["n"] == 4 and not torch.allclose(own_out, out)


def test_a_blend_hands_its_tv_to_a_model_that_starts_from_tv(tmp_path):
    from medrecon.recon.blend import HOLDOUT_DRAWS
    from medrecon.recon.methods import model_method
    from medrecon.recon.setup import guidance_config

    loaded = _mri_model(tmp_path)
    task = loaded.task
    _, meas = _measurement(task, batch=2)
    method = model_method(loaded, task, mmse(3), guidance_config("dc"), blend="auto")
    assert method.partner == "tv" and method.model.start == "tv"
    solves = {"blend": 0, "model": 0}

    def counting(fn, key):
        def wrapped(*args, **kwargs):
            solves[key] += 1
            return fn(*args, **kwargs)

        return wrapped

    method.classic.fn = counting(method.classic.fn, "blend")
    method.model.start_method.fn = counting(method.model.start_method.fn, "model")
    out, _ = method(meas, None, [3, 4])
    assert solves == {"blend": 1 + HOLDOUT_DRAWS, "model": 0}  # one TV per measurement, shared
    # the same as the model computing its own start: handing it over changes nothing but the cost
    alone = model_method(loaded, task, mmse(3), guidance_config("dc"), blend="none")
    x_m, _ = alone(meas, None, [3, 4])
    x_shared, _ = method.model(meas, None, [3, 4], start=method.classic(meas, None, [3, 4])[0])
    assert torch.allclose(x_m, x_shared, atol=1e-6)
    assert torch.isfinite(out).all()


def test_evaluate_and_the_resume_key_record_what_auto_resolved_to(tmp_path):
    from test_blend import phantom

    from medrecon import api
    from medrecon.recon.run import settings_key

    ckpt = tmp_path / "mri.safetensors"
    from test_fastmri_roundtrip import mri_checkpoint

    mri_checkpoint(ckpt)
    volume = (phantom(1, 32, seed=11)[0, 0].numpy()[:, :, None].repeat(2, axis=2) + 1.0) * 100.0
    kwargs = dict(model=ckpt, device="cpu", slice_split=None, blend="none")
    started = api.evaluate(["diffusion"], volume, steps=3, **kwargs)
    own = api.evaluate(
        ["diffusion"], volume, sampler={"name": "mmse", "steps": 3, "start": "model"}, **kwargs
    )
    assert started.config["sampler"]["start"] == "tv"
    assert own.config["sampler"]["start"] == "model"
    assert started.methods["diffusion"].psnr != own.methods["diffusion"].psnr

    task = MRITask(4)

    def key(sampler, start):
        cfg = OmegaConf.create({"seed": 0, "samples": 1, "checkpoint": None, "sampler": sampler})
        return settings_key(cfg, "diffusion", task, start=start)

    plain = {"name": "mmse", "steps": 5}
    # auto resolving to the model's estimate keeps the key of runs made before sampler.start existed
    assert key({**plain, "start": "auto"}, None) == key(plain, None) == key({**plain, "start": "model"}, None)
    assert key({**plain, "start": "auto"}, "tv") == key({**plain, "start": "tv"}, "tv") != key(plain, None)


def test_posterior_draws_refine_the_start_of_their_own_measurement(tmp_path):
    """``samples=K`` repeats each unit's start K times (row ``b * K + k``): renoised draws around each unit's TV."""
    from medrecon.recon.methods import model_method
    from medrecon.recon.setup import guidance_config

    loaded = _mri_model(tmp_path)
    task = loaded.task
    x, meas = _measurement(task, batch=2)
    sampler = SamplerConfig(name="mmse", steps=3, sigma_max=10.0, rho=2.0, renoise=1.0, start="tv")
    method = model_method(loaded, task, sampler, guidance_config("dc"), samples=3, blend="none")
    mean, std = method(meas, None, [1, 2])
    assert mean.shape == x.shape and std is not None and std.shape == x.shape
    assert float(std.max()) > 0  # the draws differ through the renoise
    for b in range(2):  # each unit alone gives the same: its start is its own TV, not its neighbour's
        alone, _ = method(meas.index([b]), None, [[1, 2][b]])
        assert torch.allclose(alone, mean[b : b + 1], atol=1e-5)
