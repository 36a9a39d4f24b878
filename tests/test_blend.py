"""``blend``: a model's output mixed with TV/NLM by a per-slice weight estimated from the measurement alone.

The weight estimates are checked where the answer is known: an oracle model (its output is the ground truth)
must get weight 1, a model that returns garbage weight 0, and the blended output must never be worse than the
better of the two by more than the estimate's noise. The SURE risk is checked against the true error.
"""

from __future__ import annotations

import math

import pytest
import torch

from medrecon.physics.denoise import DenoiseTask
from medrecon.physics.fft import mirror
from medrecon.physics.mri import MRITask
from medrecon.physics.sr import SuperResolutionTask
from medrecon.recon.blend import (
    HOLDOUT_DRAWS,
    BlendMethod,
    blend_partner,
    holdout_masks,
    kspace_weight,
    mc_divergence,
    split_kind,
    sure_weight,
)


def phantom(batch: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth blobs in encoded units (background -1), ``(B, 1, size, size)``."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(batch):
        img = torch.full((size, size), -1.0)
        for _ in range(4):
            cy, cx, r = torch.rand(3, generator=gen) * torch.tensor([1.2, 1.2, 0.3]) + torch.tensor(
                [-0.6, -0.6, 0.2]
            )
            img = img + 0.8 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out.append(img.clamp(-1, 1))
    return torch.stack(out)[:, None]


class Fixed:
    """A stand-in model method returning a fixed image whatever the measurement (an oracle or garbage)."""

    name = "diffusion"
    samples = 1

    def __init__(self, image: torch.Tensor) -> None:
        self.image = image
        self.calls = 0

    def __call__(self, meas, cond, seeds):
        self.calls += 1
        return self.image.clone(), None


class Function:
    """A stand-in model method computing ``f(y)`` (denoising)."""

    name = "diffusion"
    samples = 1

    def __init__(self, f) -> None:
        self.f = f

    def __call__(self, meas, cond, seeds):
        return self.f(meas.y), None


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / max(float(((x - ref) ** 2).mean()), 1e-12))


# ------------------------------------------------------------------------------------------------ partner
def test_auto_blends_mri_with_tv_denoising_with_nlm_and_nothing_else():
    assert blend_partner("auto", MRITask(4)) == "tv"
    assert blend_partner("auto", DenoiseTask(0.05)) == "nlm"
    assert blend_partner("auto", SuperResolutionTask(4)) is None
    assert blend_partner("auto", DenoiseTask(0.0)) is None  # no noise: SURE says nothing
    assert blend_partner("none", MRITask(4)) is None
    assert blend_partner("tv", DenoiseTask(0.05)) == "tv"
    assert split_kind(MRITask(4)) == "kspace" and split_kind(SuperResolutionTask(4)) is None


def test_a_partner_for_a_task_without_a_split_or_an_unknown_value_is_refused():
    with pytest.raises(ValueError, match="blend=none"):
        blend_partner("tv", SuperResolutionTask(4))
    with pytest.raises(ValueError, match="must be one of"):
        blend_partner("bm3d", MRITask(4))
    with pytest.raises(ValueError, match="nlm"):
        blend_partner("nlm", MRITask(4))  # NLM does not apply to MRI


# ------------------------------------------------------------------------------------------------ k-space
def test_holdout_keeps_the_centre_and_holds_out_mirror_pairs_of_sampled_lines():
    task = MRITask(4)
    x = phantom(3, 64)
    meas = task.degrade(x, torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    keep, held = holdout_masks(meas.params.mask, 0.3, gens)
    mask = meas.params.mask
    assert torch.equal(keep + held, mask)
    assert float((keep * held).abs().sum()) == 0
    for b in range(3):
        cols = mask[b].flatten() > 0
        h = held[b].flatten() > 0
        assert 0 < int(h.sum()) < int(cols.sum())
        assert bool(keep[b].flatten()[32])  # the k-space centre (W // 2) is never held out
        mirrored = mirror(held[b : b + 1].float(), (-2, -1)).flatten() > 0
        assert not bool((mirrored & cols & ~h).any())  # no held-out line has its sampled mirror kept
    again, _ = holdout_masks(mask, 0.3, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    assert torch.equal(again, keep)  # a unit's split depends on its seed only


def test_kspace_weight_is_one_for_an_oracle_and_zero_for_garbage():
    task = MRITask(4)
    x = phantom(2, 48)
    meas = task.degrade(x, torch.Generator().manual_seed(2))
    _, held = holdout_masks(meas.params.mask, 0.3, [torch.Generator().manual_seed(s) for s in (1, 2)])
    rough = task.pinv(meas)
    garbage = torch.rand_like(x) * 2 - 1
    assert torch.allclose(kspace_weight(task, meas, held, x, rough), torch.ones(2))
    assert torch.allclose(kspace_weight(task, meas, held, garbage, x), torch.zeros(2))
    half = 0.5 * (x + rough)  # a known mix of truth and zero-filling: the fit finds the truth's side
    w = kspace_weight(task, meas, held, x, half)
    assert torch.all(w > 0.99)


def test_mri_blend_follows_the_better_reconstruction():
    task = MRITask(4)
    x = phantom(2, 48, seed=3)
    meas = task.degrade(x, torch.Generator().manual_seed(4))
    from medrecon.baselines import tv

    tv_only = tv(task, meas)
    oracle = BlendMethod(Fixed(x), "tv", task)
    out, std = oracle(meas, None, [11, 12])
    assert std is None and oracle.name == "diffusion"
    assert torch.allclose(oracle.last_weights, torch.ones(2))
    assert psnr(out, x) > psnr(tv_only, x) + 10
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    bad = BlendMethod(Fixed((x + 0.5 * noise).clamp(-1, 1)), "tv", task)
    out_bad, _ = bad(meas, None, [11, 12])
    assert torch.all(bad.last_weights < 0.2)
    assert psnr(out_bad, x) > psnr(task.project(bad.model.image, meas), x) + 3  # TV rescued it
    assert bad.model.calls == 1 + HOLDOUT_DRAWS  # the full measurement, then each hold-out set
    assert bad.last_weights.shape == (2,)


def test_blend_refuses_a_25d_condition_and_tasks_without_a_split():
    task = MRITask(4)
    x = phantom(1, 32)
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="2.5D"):
        BlendMethod(Fixed(x), "tv", task)(meas, torch.zeros(1, 6, 32, 32), [0])
    with pytest.raises(ValueError, match="cannot be split"):
        BlendMethod(Fixed(x), "tv", SuperResolutionTask(4))


# ------------------------------------------------------------------------------------------------ SURE
def test_mc_divergence_of_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, 1, 32, 32, generator=gen)
    probe = torch.randn(y.shape, generator=gen)
    eps = torch.full((2,), 1e-2)
    div = mc_divergence(0.3 * y, 0.3 * (y + 1e-2 * probe), probe, eps)
    assert torch.allclose(div, torch.full((2,), 0.3 * 32 * 32), rtol=0.1)


def test_sure_weight_tracks_the_true_risk():
    sigma = 0.1
    x = phantom(2, 48, seed=5)
    gen = torch.Generator().manual_seed(6)
    y = x + sigma * torch.randn(x.shape, generator=gen)
    s = torch.full((2,), sigma)
    n = float(x[0].numel())
    # oracle (divergence 0) against the identity (divergence N): all weight on the oracle
    assert torch.all(sure_weight(y, s, x, y, torch.zeros(2), torch.full((2,), n)) > 0.95)
    # the identity against the oracle: none
    assert torch.all(sure_weight(y, s, y, x, torch.full((2,), n), torch.zeros(2)) < 0.05)
    # two linear shrinkers f_a = a y: SURE's optimum matches the true optimum over w within its noise
    fa, fb = 0.9 * y + 0.1 * x.mean(), 0.5 * y
    w = sure_weight(y, s, fa, fb, torch.full((2,), 0.9 * n), torch.full((2,), 0.5 * n))
    grid = torch.linspace(0, 1, 101)
    true_best = torch.stack(
        [
            grid[torch.argmin(torch.stack([((g * fa[b] + (1 - g) * fb[b] - x[b]) ** 2).sum() for g in grid]))]
            for b in range(2)
        ]
    )
    assert torch.allclose(w, true_best, atol=0.1)


def test_denoise_blend_uses_nlm_where_the_model_is_worse():
    task = DenoiseTask(0.08, noise="gaussian")
    x = phantom(2, 48, seed=7)
    meas = task.degrade(x, torch.Generator().manual_seed(8))
    identity = BlendMethod(Function(lambda y: y.clone()), "nlm", task)
    out, _ = identity(meas, None, [1, 2])
    assert torch.all(identity.last_weights < 0.3)  # "denoising" by doing nothing loses to NLM
    assert psnr(out, x) > psnr(meas.y, x) + 2
    oracle = BlendMethod(Fixed(x), "nlm", task)
    oracle(meas, None, [1, 2])
    assert torch.all(oracle.last_weights > 0.9)


def test_rician_sure_credits_a_model_that_removes_the_background_bias():
    """Rician noise in a large background: an oracle must still win (plain SURE would favour keeping the
    Rayleigh bias, as the identity does: 0.13 and 0.11). The oracle's true best weight is 1; the estimate's error grows
    as the partner gets closer to the truth (NLM told the noise level: 0.90 and 0.94 here)."""
    task = DenoiseTask(0.06, noise="rician")
    x = phantom(2, 64, seed=9)
    x[:, :, :24] = -1.0  # a wide empty band: Rayleigh background
    meas = task.degrade(x, torch.Generator().manual_seed(10))
    identity = Function(lambda y: y.clone())
    method = BlendMethod(Fixed(x), "nlm", task)
    method(meas, None, [3, 4])
    assert torch.all(method.last_weights > 0.8)
    worse = BlendMethod(identity, "nlm", task)
    worse(meas, None, [3, 4])
    assert torch.all(worse.last_weights < 0.3)


# ------------------------------------------------------------------------------------------------ plumbing
def test_evaluate_blends_by_default_and_reports_the_weight(tmp_path, monkeypatch):
    """``blend=auto`` wraps the MRI model in evaluate (report: partner and mean weight, a note); ``none`` does
    not; the reconstruct resume key changes with the blend, so blended and unblended runs never mix."""
    from omegaconf import OmegaConf
    from test_fastmri_roundtrip import mri_checkpoint

    from medrecon import api
    from medrecon.recon.run import settings_key

    ckpt = mri_checkpoint(tmp_path / "mri.safetensors")
    volume = (phantom(1, 32, seed=11)[0, 0].numpy()[:, :, None].repeat(2, axis=2) + 1.0) * 100.0
    kwargs = dict(model=ckpt, steps=1, device="cpu", slice_split=None)
    blended = api.evaluate(["diffusion"], volume, blend="auto", **kwargs)
    plain = api.evaluate(["diffusion"], volume, blend="none", **kwargs)
    info = blended.config["blend"]["diffusion"]
    assert info["with"] == "tv" and 0.0 <= info["mean_weight"] <= 1.0
    # the report's mean is the mean over the scored slices: the same slices reconstructed through the engine
    from medrecon.recon.blend import BlendMethod as Blend

    seen: list[float] = []
    original = Blend.__call__

    def spy(self, meas, cond, seeds):
        result = original(self, meas, cond, seeds)
        seen.extend(float(v) for v in self.last_weights)
        return result

    monkeypatch.setattr(Blend, "__call__", spy)
    again = api.evaluate(["diffusion"], volume, blend="auto", batch_size=1, **kwargs)
    monkeypatch.undo()
    assert len(seen) == 2  # one call per slice with batch_size=1
    assert again.config["blend"]["diffusion"]["mean_weight"] == pytest.approx(sum(seen) / 2, abs=1e-4)
    assert again.config["blend"]["diffusion"]["mean_weight"] == pytest.approx(info["mean_weight"], abs=1e-4)
    assert any("blended per slice with tv" in note for note in blended.notes)
    assert plain.config["blend"] is None
    assert blended.methods["diffusion"].psnr != plain.methods["diffusion"].psnr
    cfg = OmegaConf.create({"seed": 0, "samples": 1, "checkpoint": None, "blend": "auto"})
    task = MRITask(4)
    assert settings_key(cfg, "diffusion", task, blend="tv") != settings_key(
        cfg, "diffusion", task, blend=None
    )
    with pytest.raises(Exception, match="blend"):
        api.evaluate(["diffusion"], volume, blend="bm3d", **kwargs)


def test_the_std_of_a_blend_is_the_model_share_of_its_spread():
    task = MRITask(4)
    x = phantom(1, 32, seed=12)
    meas = task.degrade(x, torch.Generator().manual_seed(0))

    class Spread(Fixed):
        def __call__(self, meas, cond, seeds):
            self.calls += 1
            return self.image.clone(), torch.full_like(self.image, 0.1)

    method = BlendMethod(Spread(x), "tv", task)
    _, std = method(meas, None, [1])
    assert torch.allclose(std, 0.1 * method.last_weights.reshape(1, 1, 1, 1).expand_as(std))


def test_a_blend_does_not_depend_on_the_batch():
    """Each unit's hold-out sets and weight come from its own seed and data: alone or batched, the same."""
    task = MRITask(4)
    x = phantom(3, 32, seed=13)
    meas = task.degrade(x, torch.Generator().manual_seed(1))
    model = Function(lambda y: torch.zeros(y.shape[0], 1, 32, 32))  # a poor model: weights strictly inside
    together, _ = BlendMethod(model, "tv", task)(meas, None, [5, 6, 7])
    for b, seed in enumerate([5, 6, 7]):
        alone, _ = BlendMethod(model, "tv", task)(meas.index([b]), None, [seed])
        assert torch.allclose(alone, together[b : b + 1], atol=1e-5)


def test_reconstruct_records_the_blend_weight_of_each_item(tmp_path):
    """A measured k-space file reconstructed with ``blend=auto`` records the mean model weight in run.jsonl;
    with ``blend=none`` the record has none, and the settings differ (a rerun redoes the item)."""
    from test_fastmri_roundtrip import _image, mri_checkpoint, reconstruct, records, write_fastmri

    path = write_fastmri(tmp_path / "file_sc.h5", _image(4))
    ckpt = mri_checkpoint(tmp_path / "mri.safetensors")
    blended, plain = tmp_path / "blended", tmp_path / "plain"
    assert reconstruct(f"input={path}", f"out={blended}", f"checkpoint={ckpt}", "sampler.steps=1") == 0
    assert (
        reconstruct(f"input={path}", f"out={plain}", f"checkpoint={ckpt}", "sampler.steps=1", "blend=none")
        == 0
    )
    (rec,) = records(blended).values()
    (rec_plain,) = records(plain).values()
    assert rec.status == "ok" and rec.blend_weight is not None and 0.0 <= rec.blend_weight <= 1.0
    assert rec_plain.blend_weight is None and rec_plain.settings != rec.settings
    assert '"blend_weight"' in (blended / "run.jsonl").read_text()
