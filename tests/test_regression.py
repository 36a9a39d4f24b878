"""The supervised baseline (``objective=regression``) end to end on CPU, and ``EDMLoss``'s ``mmse_fraction``.

A regression model is the same network trained on the same pairs to map the condition to the image in one
evaluation; its checkpoint says so (``spec.objective``), ``info`` shows it, reconstruct and evaluate run the
one-evaluation estimator by themselves, and ``evaluate supervised_checkpoint=`` adds the method
``supervised``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_train as tt
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medrecon.checkpoint import ModelSpec, checkpoint_digest, load_checkpoint, read_metadata, save_checkpoint
from medrecon.cli import main, run_command
from medrecon.data.encoder import Encoder
from medrecon.diffusion import EDMLoss, EDMPrecond, GuidanceConfig
from medrecon.diffusion.regression import (
    REGRESSION_SIGMA,
    RegressionLoss,
    regression_estimate,
    regression_guidance,
    regression_output,
)
from medrecon.diffusion.tensors import append_dims
from medrecon.errors import UsageError
from medrecon.evaluate.report import read_metrics_csv
from medrecon.info import model_card
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.nn import UNet
from medrecon.physics.registry import build_task, task_config
from medrecon.recon.ledger import read_records
from medrecon.recon.measure import image_measurement
from medrecon.volume import Volume

DEMO = Path(__file__).resolve().parents[1] / "medrecon" / "assets" / "weights" / "demo_sr4x.safetensors"


def tiny_precond(seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = UNet(2, 2, 1, channels=(8, 16), num_res_blocks=1, attention_levels=(False, False), num_heads=2)
    precond = EDMPrecond(net, image_channels=1, cond_channels=1)
    with torch.no_grad():  # the output layer starts at zero: perturb so the output depends on the input
        for p in precond.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return precond


# ------------------------------------------------------------------------------------------------ EDMLoss
def _edm_loss_before(loss: EDMLoss, precond, x0, cond, generator):
    """``EDMLoss.__call__`` as it was before ``mmse_fraction`` (the reference for bit-identity)."""
    b = x0.shape[0]
    x0 = x0.float()
    from medrecon.diffusion.tensors import rand, randn, randn_like

    sigma = (randn((b,), generator, x0.device) * loss.P_std + loss.P_mean).exp()
    weight = (sigma**2 + loss.sigma_data**2) / (sigma * loss.sigma_data) ** 2
    noise = randn_like(x0, generator) * append_dims(sigma, x0.ndim)
    if cond is not None and loss.cond_drop_prob > 0:
        keep = rand((b,), generator, x0.device) >= loss.cond_drop_prob
        cond = torch.where(append_dims(keep, cond.ndim), cond, torch.zeros_like(cond))
    denoised = precond(x0 + noise, sigma, cond)
    return weight * (denoised - x0).square().flatten(1).mean(1)


class SigmaSpy(torch.nn.Module):
    """A 'denoiser' that records the sigmas and inputs it is called with and returns zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, sigma, cond=None):
        self.calls.append((x.clone(), torch.as_tensor(sigma).clone()))
        return torch.zeros_like(x)


@pytest.mark.parametrize("per_sample", [False, True])
def test_mmse_fraction_zero_is_bit_identical_to_plain_edm(per_sample):
    precond = tiny_precond()
    x0, cond = torch.randn(6, 1, 8, 8) * 0.5, torch.randn(6, 1, 8, 8)

    def gen():
        if per_sample:
            return [torch.Generator().manual_seed(10 + b) for b in range(6)]
        return torch.Generator().manual_seed(3)

    for drop in (0.0, 0.5):
        loss = EDMLoss(cond_drop_prob=drop)
        assert loss.mmse_fraction == 0.0 and loss.mmse_sigma == 10.0
        assert torch.equal(loss(precond, x0, cond, gen()), _edm_loss_before(loss, precond, x0, cond, gen()))


def test_mmse_fraction_draws_the_expected_sigmas_from_the_generator():
    from medrecon.diffusion.tensors import rand, randn, randn_like

    b, fraction = 64, 0.25
    x0, cond = torch.randn(b, 1, 4, 4) * 0.5, torch.randn(b, 1, 4, 4)
    loss = EDMLoss(cond_drop_prob=0.1, mmse_fraction=fraction)
    spy = SigmaSpy()
    values = loss(spy, x0, cond, torch.Generator().manual_seed(5))
    ((x_in, sigma),) = spy.calls
    # replay the generator: log-normal sigmas, noise, condition dropout, then the mmse draw
    g = torch.Generator().manual_seed(5)
    lognormal = (randn((b,), g) * loss.P_std + loss.P_mean).exp()
    n = randn_like(x0, g)
    rand((b,), g)
    chosen = rand((b,), g) < fraction
    expected = torch.where(chosen, torch.full_like(lognormal, 10.0), lognormal)
    assert torch.equal(sigma, expected)
    assert 0 < int(chosen.sum()) < b  # 25 % of 64: some of each
    assert int((sigma == 10.0).sum()) == int(chosen.sum())
    torch.testing.assert_close(x_in, x0 + n * append_dims(expected, 4))  # the same noise draw, rescaled
    weight = (expected**2 + 0.25) / (expected * 0.5) ** 2  # EDM's weight at each sigma
    torch.testing.assert_close(values, weight * x0.square().flatten(1).mean(1))
    # the other samples keep exactly the sigmas and noise they would have had without mmse_fraction
    spy_plain = SigmaSpy()
    EDMLoss(cond_drop_prob=0.1)(spy_plain, x0, cond, torch.Generator().manual_seed(5))
    assert torch.equal(spy_plain.calls[0][1][~chosen], sigma[~chosen])
    # fraction 1: every sample at mmse_sigma; per-sample generators: a sample's sigma is its own generator's
    spy_all = SigmaSpy()
    EDMLoss(mmse_fraction=1.0, mmse_sigma=7.0)(spy_all, x0[:3], None, torch.Generator().manual_seed(1))
    assert torch.equal(spy_all.calls[0][1], torch.full((3,), 7.0))
    spy_a, spy_b = SigmaSpy(), SigmaSpy()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    loss(spy_a, x0[:3], cond[:3], gens)
    loss(spy_b, x0[2:3], cond[2:3], [torch.Generator().manual_seed(3)])
    assert torch.equal(spy_a.calls[0][1][2:], spy_b.calls[0][1])


def test_edm_loss_option_validation():
    for bad in (
        {"mmse_fraction": 1.5},
        {"mmse_fraction": -0.1},
        {"mmse_sigma": 0.0},
        {"mmse_sigma": float("inf")},
    ):
        with pytest.raises(ValueError, match="mmse_"):
            EDMLoss(**bad)


# ------------------------------------------------------------------------------------------------ regression
def test_regression_loss_is_the_scaled_l1_or_l2_error_of_one_evaluation():
    precond = tiny_precond()
    x0, cond = torch.randn(3, 1, 8, 8) * 0.5, torch.randn(3, 1, 8, 8)
    out = precond(torch.zeros_like(x0), torch.full((3,), REGRESSION_SIGMA), cond)
    torch.testing.assert_close(regression_output(precond, cond), out)
    c_out = precond.coefficients(torch.tensor(REGRESSION_SIGMA))[1]
    err = (out - x0) / c_out
    torch.testing.assert_close(RegressionLoss()(precond, x0, cond), err.abs().flatten(1).mean(1))
    l2 = RegressionLoss(norm="l2")(precond, x0, cond)
    torch.testing.assert_close(l2, err.square().flatten(1).mean(1))
    # L2 at that sigma is EDM's weighted loss with a zero noisy input
    weight = (REGRESSION_SIGMA**2 + 0.25) / (REGRESSION_SIGMA * 0.5) ** 2
    torch.testing.assert_close(l2, weight * (out - x0).square().flatten(1).mean(1))
    # deterministic: the generator is not used
    g = torch.Generator().manual_seed(0)
    assert torch.equal(RegressionLoss()(precond, x0, cond, g), RegressionLoss()(precond, x0, cond))
    with pytest.raises(ValueError, match="cond must be given"):
        RegressionLoss()(precond, x0, None)
    with pytest.raises(ValueError, match="norm"):
        RegressionLoss(norm="huber")


def test_regression_estimate_is_one_evaluation_then_data_consistency():
    precond = tiny_precond().eval()
    task = build_task("sr2x")
    x = torch.randn(2, 1, 8, 8) * 0.5
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    cond = task.condition(meas)
    with torch.no_grad():
        raw = regression_output(precond, cond)
        torch.testing.assert_close(regression_estimate(precond, task, meas), raw)
        dc = regression_estimate(precond, task, meas, GuidanceConfig("dc"))
        tau = torch.full((2,), REGRESSION_SIGMA * 0.5 / (REGRESSION_SIGMA**2 + 0.25) ** 0.5)
        torch.testing.assert_close(dc, task.project(raw, meas, tau=tau))
    # data consistency: the block means of the estimate are the measurement (sr2x is noise-free)
    torch.testing.assert_close(task.forward(dc, meas.params), meas.y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="guidance=dps does not apply"):
        regression_estimate(precond, task, meas, GuidanceConfig("dps", 1.0))
    guidance, note = regression_guidance(GuidanceConfig("dps", 1.0))
    assert guidance.name == "none" and "guidance=dps" in note
    assert regression_guidance(GuidanceConfig("dc")) == (GuidanceConfig("dc"), None)


def test_specs_without_an_objective_are_diffusion_models_with_unchanged_digests(tmp_path):
    assert read_metadata(DEMO)["spec"]["objective"] == "diffusion"  # the bundled demo model
    assert model_card(DEMO).objective == "diffusion"
    spec = ModelSpec(
        model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
               "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
        task=task_config("sr2x"), spatial_dims=2, image_channels=1, cond_channels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    new = save_checkpoint(
        tmp_path / "new.safetensors",
        raw=spec.build_precond(),
        ema=None,
        spec=spec,
        encoder=Encoder(),
        config={},
        step=1,
    )
    with safe_open(str(new), framework="pt") as f:
        metadata = f.metadata()
    stored = json.loads(metadata["spec"])
    assert stored["objective"] == "diffusion"  # written explicitly
    old_spec = {k: v for k, v in stored.items() if k != "objective"}
    old = tmp_path / "old.safetensors"
    save_file(load_file(new), str(old), metadata={**metadata, "spec": json.dumps(old_spec)})
    assert load_checkpoint(old).spec.objective == "diffusion"
    assert checkpoint_digest(old) == checkpoint_digest(new)  # the same weights keep their identity
    regression = dataclasses.replace(spec, objective="regression")
    raw = {k[4:]: v for k, v in load_file(new).items() if k.startswith("raw.")}
    reg = save_checkpoint(
        tmp_path / "reg.safetensors", raw=raw, ema=None, spec=regression, encoder=Encoder(), config={}, step=1
    )
    assert checkpoint_digest(reg) != checkpoint_digest(new)  # same tensors, another estimator
    bad = tmp_path / "bad.safetensors"
    save_file(
        load_file(new), str(bad), metadata={**metadata, "spec": json.dumps({**stored, "objective": "gan"})}
    )
    with pytest.raises(UsageError, match="objective='gan' is not one of diffusion, regression"):
        load_checkpoint(bad)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The training tests' synthetic archive (two 24x24x12 MR volumes, train and val)."""
    return tt.write_phantom_manifest(tmp_path_factory.mktemp("regression_archive"))


def train(manifest: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            f"manifest={manifest}",
            f"out={out}",
            "task=sr4x",
            "model=unet_tiny",
            "device=cpu",
            "data.patch_size=16",
            "train.batch_size=2",
            "train.warmup=1",
            "progress=false",
            "train.log_every=1",
            "val.steps=2",
            "data.val_items=2",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def models(manifest, tmp_path_factory) -> dict[str, Path]:
    """A regression model (3 steps, validated at step 2 with dc guidance) and a diffusion model (1 step)."""
    root = tmp_path_factory.mktemp("regression_runs")
    assert train(manifest, root / "reg", "objective=regression", "train.steps=3", "train.val_every=2") == 0
    assert train(manifest, root / "diff", "train.steps=1", "train.val_every=0") == 0
    return {
        "run": root / "reg",
        "regression": root / "reg" / "last.safetensors",
        "diffusion": root / "diff" / "last.safetensors",
    }


def test_regression_training_records_its_objective_validates_and_learns(models, capsys):
    run = models["run"]
    log = (run / "train.log").read_text()
    assert "objective regression" in log
    meta = read_metadata(models["regression"])
    assert meta["spec"]["objective"] == "regression" and meta["config"]["objective"] == "regression"
    assert meta["config"]["regression"]["norm"] == "l1"
    assert meta["card"].validation is not None and meta["card"].validation.step == 2  # validation ran
    assert np.isfinite(meta["card"].validation.psnr)
    assert read_metadata(models["diffusion"])["spec"]["objective"] == "diffusion"
    loaded = load_checkpoint(models["regression"])
    out = regression_output(loaded.precond, torch.randn(1, 1, 16, 16))
    assert out.abs().max() > 0  # the zero-initialised output layer has moved
    assert main(["info", f"checkpoint={models['regression']}", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["objective"] == "regression"
    assert main(["info", f"checkpoint={models['regression']}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("objective") and "regression (supervised baseline" in line for line in lines)


def test_objective_is_validated_and_resume_refuses_another_objective(manifest, models, tmp_path):
    assert train(manifest, tmp_path / "a", "objective=gan", "train.steps=1") == 2
    assert "objective='gan' is not one of diffusion, regression" in (tmp_path / "a" / "train.log").read_text()
    assert (
        train(manifest, tmp_path / "b", "objective=regression", "+regression.huber=1", "train.steps=1") == 2
    )
    # a diffusion run continued as a regression: refused (the spec's objective differs)
    diff_run = tmp_path / "diff"
    shutil.copytree(models["diffusion"].parent, diff_run)
    code = train(
        manifest, diff_run, "objective=regression", "train.steps=1", "train.val_every=0", "resume=true"
    )
    assert code == 2
    assert "different objective" in (diff_run / "train.log").read_text()


def test_reconstruct_with_a_regression_checkpoint_is_one_deterministic_evaluation(models, tmp_path):
    lowres = np.ascontiguousarray(tt.phantom(1)[::4, ::4, :])  # 6x6x12: the sr4x measurement
    scan = tmp_path / "scan.nii.gz"
    write_nifti(Volume(lowres, np.diag([4.0, 4.0, 2.0, 1.0])), scan)
    ckpt = models["regression"]
    outs = {}
    for seed in (0, 1):
        out = tmp_path / f"out{seed}"
        args = [
            f"input={scan}",
            f"out={out}",
            f"checkpoint={ckpt}",
            "guidance=none",
            "device=cpu",
            "progress=false",
            f"seed={seed}",
            "samples=3",
            "sampler=ddpm",
        ]
        assert run_command("reconstruct", args) == 0
        (rec,) = read_records(out / "run.jsonl")
        assert rec.status == "ok" and rec.method == "regression"
        assert not (out / "scan_std.nii.gz").exists() and not any("_std" in o for o in rec.outputs)
        outs[seed] = read_nifti(out / rec.outputs[0]).array
    text = (tmp_path / "out0" / "reconstruct.log").read_text()
    assert "is a regression model (objective=regression): one network evaluation" in text
    assert "samples=3 ignored" in text and "reconstructing 1 item(s) with regression" in text
    assert np.array_equal(outs[0], outs[1])  # no randomness: the seed does not matter
    # equal to one network evaluation computed directly
    loaded = load_checkpoint(ckpt)
    enc = loaded.encoder.for_volume(lowres)
    units = torch.from_numpy(enc.encode(np.moveaxis(lowres, 2, 0)))[:, None]
    meas = image_measurement(loaded.task, units)
    with torch.no_grad():
        direct = regression_output(loaded.precond, loaded.task.condition(meas))
    expected = np.moveaxis(enc.decode(direct[:, 0].numpy()), 0, 2)
    assert outs[0].shape == (24, 24, 12)
    np.testing.assert_allclose(outs[0], expected, rtol=1e-5, atol=1e-4)


def test_evaluate_adds_the_supervised_method(manifest, models, tmp_path, monkeypatch):
    from medrecon.evaluate import figures

    panels = []
    real = figures.save_panel
    monkeypatch.setattr(figures, "save_panel", lambda path, **kw: panels.append(kw) or real(path, **kw))
    out = tmp_path / "eval"
    args = [
        f"manifest={manifest}",
        f"out={out}",
        f"checkpoint={models['diffusion']}",
        "split=val",
        f"supervised_checkpoint={models['regression']}",
        "sampler.steps=2",
        "device=cpu",
    ]
    assert run_command("evaluate", args) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["input", "bicubic", "tv", "supervised", "diffusion"]
    assert report["config"]["supervised_checkpoint"] == "last.safetensors"
    assert report["config"]["supervised_step"] == 3 and report["config"]["guidance"]["name"] == "dc"
    rows = read_metrics_csv(out / "metrics.csv")
    supervised = [r for r in rows if r["method"] == "supervised"]
    assert len(supervised) == 1 and supervised[0]["slices"] == 12 and np.isfinite(supervised[0]["psnr"])
    assert "| sr4x | supervised | 1 |" in (out / "report.md").read_text()
    assert len(list((out / "figures").glob("*.png"))) == 1
    assert list(panels[0]["images"]) == ["input", "bicubic", "tv", "supervised", "diffusion"]
    assert panels[0]["error_of"] == "diffusion"
    # explicit methods: supervised is added (before diffusion); a regression model as checkpoint= alone
    out2 = tmp_path / "eval2"
    args2 = [
        f"manifest={manifest}",
        f"out={out2}",
        f"checkpoint={models['regression']}",
        "split=val",
        "methods=[bicubic]",
        "guidance=dps",
        "device=cpu",
    ]
    assert run_command("evaluate", args2) == 0
    report2 = json.loads((out2 / "report.json").read_text())
    assert list(report2["methods"]) == ["bicubic", "supervised"] and report2["config"]["checkpoint"] is None
    # the same slices, measurements and model give the same supervised score (dc vs none aside: compare
    # against a run with the same guidance)
    out3 = tmp_path / "eval3"
    args3 = [
        f"manifest={manifest}",
        f"out={out3}",
        f"supervised_checkpoint={models['regression']}",
        "split=val",
        "methods=[bicubic]",
        "guidance=dc",
        "device=cpu",
    ]
    assert run_command("evaluate", args3) == 0
    score3 = json.loads((out3 / "report.json").read_text())["methods"]["supervised"]["psnr"]
    assert score3 == pytest.approx(report["methods"]["supervised"]["psnr"], rel=1e-6)


def test_evaluate_refuses_a_supervised_checkpoint_that_does_not_fit(manifest, models, tmp_path):
    def refused(name, *extra):
        out = tmp_path / name
        args = [f"manifest={manifest}", f"out={out}", "split=val", "device=cpu", *extra]
        assert run_command("evaluate", args) == 2
        errors = [line for line in (out / "evaluate.log").read_text().splitlines() if "ERROR" in line]
        assert len(errors) == 1
        return errors[0]

    line = refused(
        "diff", f"checkpoint={models['diffusion']}", f"supervised_checkpoint={models['diffusion']}"
    )
    assert "is a diffusion model; it takes a model trained with objective=regression" in line
    spec = ModelSpec(
        model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
               "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
        task=task_config("sr2x"), spatial_dims=2, image_channels=1, cond_channels=1, objective="regression",
    )  # fmt: skip
    torch.manual_seed(0)
    other = save_checkpoint(
        tmp_path / "sr2x.safetensors",
        raw=spec.build_precond(),
        ema=None,
        spec=spec,
        encoder=Encoder(),
        config=OmegaConf.create({"data": {"axis": 2}}),
        step=1,
    )
    line = refused("task", f"checkpoint={models['diffusion']}", f"supervised_checkpoint={other}")
    assert "supervised_checkpoint=sr2x.safetensors does not fit checkpoint= (it differs in task" in line
    line = refused(
        "both", f"checkpoint={models['regression']}", f"supervised_checkpoint={models['regression']}"
    )
    assert "is a regression model: give the diffusion model as checkpoint=" in line
    line = refused("nosup", f"checkpoint={models['diffusion']}", "methods=[supervised]")
    assert "methods includes supervised, which needs supervised_checkpoint=FILE" in line
