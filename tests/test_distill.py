"""``medrecon distill``: the distillation targets, the record in the checkpoint, exact resume after a stop or a
kill, and reconstruction with the distilled model (its grid, posterior draws, a std map). CPU, tiny."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_train as tt
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medrecon.checkpoint import check_checkpoint, load_checkpoint, read_metadata
from medrecon.cli import main
from medrecon.diffusion.distill import (
    DistillRecord,
    GridSampler,
    ProgressiveDistillLoss,
    halving_grids,
)
from medrecon.diffusion.samplers import SamplerConfig, sample_mmse
from medrecon.errors import UsageError
from medrecon.schema import SchemaError
from medrecon.train import loop

SIGMA_DATA = 0.5


def toy_teacher(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    """The posterior mean of ``x0 ~ N(cond, sigma_data^2)`` given ``x = x0 + sigma n``: a denoiser with an exact
    probability-flow ODE, nonlinear in sigma."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (SIGMA_DATA**2 * x + s2 * cond) / (s2 + SIGMA_DATA**2)


def mmse_grid(steps: int) -> tuple[float, ...]:
    sampler = SamplerConfig(name="mmse", steps=steps, sigma_max=10.0, sigma_refine=0.2, rho=2.0)
    return tuple(sampler.sigmas().tolist())


# ---------------------------------------------------------------------------------------------- the maths
def test_grids_halve_and_refuse_what_does_not():
    grid = mmse_grid(8)
    rounds = halving_grids(grid, 2)
    assert [len(g) - 1 for g in rounds] == [4, 2]
    assert rounds[0] == grid[::2] and rounds[1] == grid[::4] and rounds[1][0] == 10.0 and rounds[1][-1] == 0.0
    assert [len(g) - 1 for g in halving_grids(grid, 1)] == [4, 2, 1]
    for bad in (3, 8, 16, 0):
        with pytest.raises(ValueError, match="power-of-two"):
            halving_grids(grid, bad)


def test_a_student_step_on_the_target_lands_where_two_teacher_steps_land():
    """Following the targets D~ with the student's sampler rule reproduces the teacher's trajectory at every
    other level, and so the teacher's sample (deterministic path)."""
    torch.manual_seed(0)
    grid = mmse_grid(8)
    loss = ProgressiveDistillLoss(toy_teacher, grid, SIGMA_DATA, renoise_fraction=0.0)
    student = loss.student_grid
    cond = torch.randn(2, 1, 6, 6)
    x = torch.randn(2, 1, 6, 6) * grid[0]
    no = torch.zeros(2, dtype=torch.bool)
    state = x
    for j in range(len(student) - 1):
        start, target = loss.targets(x, torch.full((2,), j), no, torch.zeros_like(x), cond)
        torch.testing.assert_close(start, state)  # the teacher's state at level 2j is where the student is
        r = 0.0 if j == 0 else student[j + 1] / student[j]  # the mmse rule: the first step is the estimate
        state = target + r * (start - target)
    teacher_sample = sample_mmse(lambda xi, s: toy_teacher(xi, s, cond), x, grid)
    torch.testing.assert_close(state, teacher_sample)


def test_renoised_states_get_fresh_noise_at_the_students_first_refinement_level():
    grid = mmse_grid(4)
    loss = ProgressiveDistillLoss(toy_teacher, grid, SIGMA_DATA)
    cond, x, fresh = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5) * grid[0], torch.randn(2, 1, 5, 5)
    level = torch.ones(2, dtype=torch.long)
    plain, _ = loss.targets(x, level, torch.tensor([False, False]), fresh, cond)
    noisy, _ = loss.targets(x, level, torch.tensor([True, False]), fresh, cond)
    torch.testing.assert_close(noisy[0], plain[0] + grid[2] * fresh[0])
    torch.testing.assert_close(noisy[1], plain[1])
    # the loss runs on a batch of mixed levels and is finite and per sample
    values = loss(
        lambda xi, s, c: toy_teacher(xi, s, c) + 0.01, torch.zeros(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    )
    assert values.shape == (4,) and torch.isfinite(values).all() and (values > 0).all()


def test_the_record_is_checked_like_every_other_metadata_field():
    grid = mmse_grid(4)[::2]
    record = DistillRecord(steps=2, sigmas=grid, teacher_steps=4, teacher="ab" * 32)
    assert DistillRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.sampler_for(1) == GridSampler(grid) and record.sampler_for(3).renoise == 1.0
    bad = {
        "sigmas": [10.0, 0.5, 0.5, 0.0][:3],  # not strictly decreasing
        "teacher_steps": 6,  # not a power-of-two multiple
        "teacher": "../../etc/passwd",
        "steps": True,
        "method": "consistency",
    }
    for key, value in bad.items():
        with pytest.raises(SchemaError):
            DistillRecord.from_dict({**record.to_dict(), key: value})
    with pytest.raises(SchemaError, match="unknown key"):
        DistillRecord.from_dict({**record.to_dict(), "_target_": "os.system"})
    with pytest.raises(SchemaError, match="levels for"):
        DistillRecord(steps=1, sigmas=grid, teacher_steps=4, teacher="ab" * 32)


# ---------------------------------------------------------------------------------------------- the command
def run_distill(teacher: Path, manifest: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "distill",
            f"checkpoint={teacher}",
            f"manifest={manifest}",
            f"out={out}",
            "device=cpu",
            "progress=false",
            "distill.teacher_steps=4",
            "distill.student_steps=1",
            "train.steps=2",
            "train.batch_size=2",
            "train.warmup=1",
            "train.lr=1e-3",
            "train.ckpt_every=1",
            "train.val_every=0",
            "train.log_every=1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step teacher on the phantom archive (+data.patch_size=16 stored in it) and a straight distillation
    4 -> 2 -> 1 steps of it."""
    root = tmp_path_factory.mktemp("distill")
    manifest = tt.write_phantom_manifest(root)
    teacher = root / "teacher"
    args = ["train", f"manifest={manifest}", f"out={teacher}", "task=sr4x", "model=unet_tiny", "device=cpu"]
    args += ["data.patch_size=16", "train.batch_size=2", "train.steps=2", "train.warmup=1", "progress=false"]
    assert main(args) == 0
    straight = root / "straight"
    assert run_distill(teacher / "last.safetensors", manifest, straight) == 0
    return {"root": root, "manifest": manifest, "teacher": teacher / "last.safetensors", "straight": straight}


def same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and len(ta) > 0
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # raw and EMA weights, bit for bit


def test_distillation_writes_one_run_per_round_and_a_checkpoint_of_the_teachers_format(runs):
    straight = runs["straight"]
    for steps in (2, 1):
        assert (straight / f"steps_{steps}" / "last.safetensors").is_file()
        assert (straight / f"steps_{steps}" / "state_00000002.pt").is_file()
    teacher, student = read_metadata(runs["teacher"]), read_metadata(straight / "last.safetensors")
    assert student["spec"] == teacher["spec"] and teacher["distill"] is None
    record = student["distill"]
    assert record.steps == 1 and record.teacher_steps == 4 and record.sigmas == (10.0, 0.0)
    assert read_metadata(straight / "steps_2" / "last.safetensors")["distill"].sigmas == mmse_grid(4)[::2]
    assert student["config"]["data"]["patch_size"] == 16  # the teacher's data settings, not the defaults
    assert student["config"]["checkpoint"] == "last.safetensors"  # a path is stored by its name only
    assert not any(
        torch.equal(v, load_file(runs["teacher"])[k])
        for k, v in load_file(straight / "last.safetensors").items()
        if k.startswith("raw.net.") and v.numel() > 100
    )  # the student trained
    assert "round 2/2: 2 -> 1 steps" in (straight / "distill.log").read_text()


def test_a_stopped_distillation_resumes_to_the_same_weights(runs):
    split = runs["root"] / "split"
    teacher, manifest = runs["teacher"], runs["manifest"]
    assert run_distill(teacher, manifest, split, "train.stop_at=3") == 0  # stops in round 2, step 1
    assert (split / "steps_2" / "state_00000002.pt").is_file()
    assert (split / "steps_1" / "state_00000001.pt").is_file()
    assert not (split / "steps_1" / "ckpt_00000002.safetensors").exists()
    assert not (split / "last.safetensors").exists()
    assert run_distill(teacher, manifest, split, "resume=false") == 2  # never overwrites a run
    assert run_distill(teacher, manifest, split, "train.stop_at=9") == 2  # beyond the 2 x 2 steps
    assert run_distill(teacher, manifest, split, "train.lr=2e-3") == 2  # another configuration: refused
    assert run_distill(teacher, manifest, split) == 0  # the same command line continues it
    assert "round 1 (2 steps) is done" in (split / "distill.log").read_text()
    same_weights(runs["straight"] / "last.safetensors", split / "last.safetensors")
    same_weights(runs["straight"] / "steps_2" / "last.safetensors", split / "steps_2" / "last.safetensors")


class Killed(Exception):
    """Stands in for SLURM ending a job mid-step."""


def test_a_killed_distillation_resumes_to_the_same_weights(runs, monkeypatch):
    killed = runs["root"] / "killed"
    real, calls = loop.batch_loss, {"n": 0}

    def killed_in_step_2(*args):  # round 1: call 1 is step 1 (checkpoint), call 2 dies
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed("job ended by the scheduler")
        return real(*args)

    monkeypatch.setattr(loop, "batch_loss", killed_in_step_2)
    assert run_distill(runs["teacher"], runs["manifest"], killed) == 1
    monkeypatch.setattr(loop, "batch_loss", real)
    assert sorted(p.name for p in (killed / "steps_2").glob("ckpt_*")) == ["ckpt_00000001.safetensors"]
    assert run_distill(runs["teacher"], runs["manifest"], killed) == 0
    assert "resumed from ckpt_00000001.safetensors at step 1" in (killed / "distill.log").read_text()
    same_weights(runs["straight"] / "last.safetensors", killed / "last.safetensors")


def test_a_run_of_another_teacher_is_not_continued(runs, tmp_path):
    other = tmp_path / "other"
    assert run_distill(runs["teacher"], runs["manifest"], other, "train.stop_at=1") == 0
    # the same folder, resume=true (options may change), but the grid differs: refused, files untouched
    saved = (other / "steps_2" / "last.safetensors").read_bytes()
    code = run_distill(runs["teacher"], runs["manifest"], other, "resume=true", "sampler.sigma_refine=0.1")
    assert (
        code == 2 and "cannot continue from ckpt_00000001.safetensors" in (other / "distill.log").read_text()
    )
    assert (other / "steps_2" / "last.safetensors").read_bytes() == saved


def test_usage_errors(runs, tmp_path):
    common = (runs["teacher"], runs["manifest"])
    assert run_distill(*common, tmp_path / "a", "distill.student_steps=3") == 2  # 4 does not halve into 3
    assert run_distill(*common, tmp_path / "b", "sampler=dpmpp") == 2  # only the mmse rule is distilled
    assert run_distill(*common, tmp_path / "c", "distill.bogus=1") == 2
    assert run_distill(*common, tmp_path / "d", "+data.context=1") == 2  # the teacher has no 2.5D context
    supervised = tmp_path / "supervised"
    args = [
        "train",
        f"manifest={runs['manifest']}",
        f"out={supervised}",
        "objective=regression",
        "device=cpu",
    ]
    assert main([*args, "data.patch_size=16", "train.batch_size=2", "train.steps=1", "progress=false"]) == 0
    assert run_distill(supervised / "last.safetensors", runs["manifest"], tmp_path / "e") == 2


# ---------------------------------------------------------------------------------------------- using it
def test_the_distilled_checkpoint_loads_safely_and_a_forged_record_is_refused(runs, tmp_path):
    path = runs["straight"] / "steps_2" / "last.safetensors"
    check_checkpoint(path)
    loaded = load_checkpoint(path)
    assert loaded.distill.steps == 2 and loaded.precond.distilled == loaded.distill
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    for forged in (
        {**json.loads(metadata["distill"]), "sigmas": [10.0, 20.0, 0.0]},
        {**json.loads(metadata["distill"]), "steps": 10**9},
        {"_target_": "builtins.exec", "steps": 2},
    ):
        bad = tmp_path / "forged.safetensors"
        save_file(tensors, str(bad), metadata={**metadata, "distill": json.dumps(forged)})
        with pytest.raises(UsageError, match="distill"):
            load_checkpoint(bad)


def test_reconstruct_samples_the_distilled_grid_with_a_std_map(runs, tmp_path):
    import nibabel as nib

    from medrecon.recon.methods import DiffusionMethod

    path = runs["straight"] / "steps_2" / "last.safetensors"
    loaded = load_checkpoint(path)
    method = DiffusionMethod(loaded.precond, loaded.task, SamplerConfig(name="mmse"), None, samples=2)
    assert method.sampler == GridSampler(loaded.distill.sigmas, renoise=1.0)
    one = DiffusionMethod(loaded.precond, loaded.task, SamplerConfig(name="mmse"), None, samples=1)
    assert one.sampler == GridSampler(loaded.distill.sigmas) and one.sampler.steps == 2

    volume = runs["root"] / "vol1.nii.gz"
    out = tmp_path / "recon"
    args = ["reconstruct", f"input={volume}", f"checkpoint={path}", f"out={out}", "device=cpu"]
    assert main([*args, "samples=2"]) == 0
    (record,) = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert record["status"] == "ok"
    mean = np.asarray(nib.load(out / f"{record['id']}.nii.gz").dataobj)
    std = np.asarray(nib.load(out / f"{record['id']}_std.nii.gz").dataobj)
    assert mean.shape == std.shape and np.isfinite(mean).all() and np.isfinite(std).all()
    assert std.max() > 0  # renoised draws differ
    assert "distilled checkpoint: 2 network evaluation(s)" in (out / "reconstruct.log").read_text()


def test_info_shows_the_distillation(runs, capsys):
    path = runs["straight"] / "last.safetensors"
    assert main(["info", f"checkpoint={path}", "format=json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["distilled"]["steps"] == 1 and card["distilled"]["sigmas"] == [10.0, 0.0]
    assert main(["info", f"checkpoint={runs['teacher']}", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["distilled"] is None


def test_evaluate_reports_the_distilled_grid_it_sampled(runs, tmp_path):
    path = runs["straight"] / "steps_2" / "last.safetensors"
    out = tmp_path / "eval"
    args = [
        f"manifest={runs['manifest']}",
        f"checkpoint={path}",
        f"out={out}",
        "device=cpu",
        "progress=false",
    ]
    assert (
        main(["evaluate", *args, "methods=[diffusion]", "split=val", "max_items=1", "figures.volumes=0"]) == 0
    )
    sampler = json.loads((out / "report.json").read_text())["config"]["sampler"]
    assert (
        sampler["name"] == "distilled"
        and sampler["grid"] == list(runs_grid(path))
        and sampler["renoise"] == 0
    )


def runs_grid(path: Path) -> tuple[float, ...]:
    return load_checkpoint(path).distill.sigmas
