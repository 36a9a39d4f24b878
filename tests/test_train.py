"""``medrecon train`` end to end on a tiny synthetic manifest (CPU): checkpoints, resume, loss, NaN, DDP,
errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medrecon.checkpoint import load_checkpoint
from medrecon.cli import main
from medrecon.device import resolve_device
from medrecon.io.nifti import write_nifti
from medrecon.manifest import ManifestRecord, write_manifest
from medrecon.train import loop
from medrecon.train.optim import warmup_cosine
from medrecon.train.settings import TrainSettings
from medrecon.train.state import load_state
from medrecon.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 24, 12)


def phantom(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    vol = np.where((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1, 100.0, 0.0)
    vol += np.where((i / 0.3) ** 2 + ((j - 0.2) / 0.25) ** 2 < 1, 100.0, 0.0)
    return np.clip(vol * (1 + 0.2 * k) + rng.normal(0, 1, SHAPE), 0, None).astype(np.float32)


def write_phantom_manifest(root: Path) -> Path:
    """A 24x24x12 MR NIfTI for training and one for validation in ``root``, and their manifest."""
    records = []
    for n, split in enumerate(("train", "val")):
        path = root / f"vol{n}.nii.gz"
        write_nifti(Volume(phantom(n), np.diag([1.0, 1.0, 2.0, 1.0])), path)
        records.append(
            ManifestRecord(f"s-{n:016x}", "nifti", [path], "MR", SHAPE, (1.0, 1.0, 2.0), split, "ok")
        )
    return write_manifest(root / "manifest.jsonl", records)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_phantom_manifest(tmp_path_factory.mktemp("archive"))


def train(manifest: Path, out: Path, *extra: str, device: str = "cpu") -> int:
    args = [
        "train",
        f"manifest={manifest}",
        f"out={out}",
        "task=sr4x",
        "model=unet_tiny",
        f"device={device}",
        "data.patch_size=16",
        "train.batch_size=2",
        "train.warmup=1",
        "progress=false",
        "train.log_every=1",
        *extra,
    ]
    return main(args)


def scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_train_writes_a_loadable_checkpoint_logs_and_validation(manifest, tmp_path):
    out = tmp_path / "run"
    code = train(
        manifest, out, "train.steps=4", "train.val_every=2", "train.ckpt_every=2", "train.keep_last=1"
    )
    assert code == 0
    for name in (
        "last.safetensors",
        "best.safetensors",
        "ckpt_00000004.safetensors",
        "state_00000004.pt",
        "train.log",
    ):
        assert (out / name).is_file(), name
    assert not (out / "ckpt_00000002.safetensors").exists()  # keep_last=1 pruned it
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "loss" in (out / "train.log").read_text()
    loaded = load_checkpoint(out / "last.safetensors")
    assert loaded.step == 4 and loaded.spatial_dims == 2 and loaded.context == 0
    assert loaded.config.train.steps == 4 and loaded.config.manifest == "manifest.jsonl"
    x = loaded.encoder.for_volume(phantom(0)).encode(torch.from_numpy(phantom(0)[None, None, :16, :16, 0]))
    meas = loaded.task.degrade(x)
    with torch.no_grad():
        y = loaded.precond(torch.randn_like(x), torch.tensor([1.0]), loaded.task.condition(meas))
    assert y.shape == (1, 1, 16, 16) and torch.isfinite(y).all()
    assert len(scalars(out, "val/psnr")) == 2 and len(scalars(out, "train/loss")) == 4
    assert all(math.isfinite(v) for v in scalars(out, "train/img_per_s"))


def test_resume_continues_exactly(manifest, tmp_path):
    common = ("train.steps=4", "train.ckpt_every=2", "train.val_every=0", "train.accum=2", "train.lr=1e-3")
    assert train(manifest, tmp_path / "straight", *common) == 0
    assert train(manifest, tmp_path / "split", *common, "train.stop_at=2") == 0
    assert load_state(tmp_path / "split" / "state_00000002.pt")["step"] == 2
    assert not (tmp_path / "split" / "ckpt_00000004.safetensors").exists()
    assert train(manifest, tmp_path / "split", *common, "resume=false") == 2  # never overwrites a run
    assert train(manifest, tmp_path / "split", *common, "resume=true") == 0
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(tmp_path / "split" / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)  # raw and EMA weights, bit for bit


class Killed(Exception):
    """Stands in for SLURM ending a job mid-step."""


def test_requeued_run_resumes_by_itself_and_refuses_another_config(manifest, tmp_path, monkeypatch):
    common = ("train.steps=4", "train.ckpt_every=2", "train.val_every=0", "train.accum=2", "train.lr=1e-3")
    assert train(manifest, tmp_path / "straight", *common) == 0
    real, calls = loop.batch_loss, {"n": 0}

    def killed_in_step_3(*args):  # accum=2: calls 1-4 are steps 1-2 (checkpoint at 2), call 5 is step 3
        calls["n"] += 1
        if calls["n"] == 5:
            raise Killed("job ended by the scheduler")
        return real(*args)

    run = tmp_path / "requeued"
    monkeypatch.setattr(loop, "batch_loss", killed_in_step_3)
    assert train(manifest, run, *common) == 1  # an unexpected error
    monkeypatch.setattr(loop, "batch_loss", real)
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "ckpt_00000002.safetensors",
        "last.safetensors",
    ]
    saved = (run / "last.safetensors").read_bytes()
    # the same command line again (no resume=) into a folder of another configuration: refused, untouched
    assert train(manifest, run, *common, "train.lr=2e-3", "seed=1", "train.keep_last=5") == 2
    refusal = [
        line for line in (run / "train.log").read_text().splitlines() if "another configuration" in line
    ]
    assert len(refusal) == 1 and "differs in seed, train.lr)" in refusal[0]  # keep_last may change
    assert (run / "last.safetensors").read_bytes() == saved
    assert train(manifest, run, *common, "resume=maybe") == 2
    # the identical command line: continues from step 2 and ends where the uninterrupted run ends
    assert train(manifest, run, *common, "progress=true") == 0
    assert "resumed from ckpt_00000002.safetensors at step 2" in (run / "train.log").read_text()
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(run / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)  # raw and EMA weights, bit for bit


def test_resume_modes_and_what_counts_as_the_same_configuration():
    from medrecon.errors import UsageError
    from medrecon.train.resume import config_differences, resume_mode

    modes = [resume_mode(v) for v in (True, False, "auto", "TRUE", " false")]
    assert modes == ["true", "false", "auto", "true", "false"]
    for bad in ("maybe", 1, None, ""):
        with pytest.raises(UsageError, match="not one of auto, true, false"):
            resume_mode(bad)
    stored = {"seed": 0, "device": "cuda:0", "train": {"steps": 10, "stop_at": 4, "lr": 1e-3}, "data": {}}
    requeued = {"seed": 0, "device": "cuda:3", "train": {"steps": 10, "lr": 1e-3}, "data": {"num_workers": 4}}
    assert config_differences(stored, requeued) == []
    other = {**requeued, "train": {"steps": 20, "lr": 1e-3}, "model": {"channels": [8]}}
    assert config_differences(stored, other) == ["model.channels", "train.steps"]
    # options added later: a run stored before them holds the value that reproduces it, any other differs
    newer = {**requeued, "objective": "diffusion", "loss": {"mmse_fraction": 0.0}}
    assert config_differences(stored, newer) == []
    changed = {**requeued, "loss": {"mmse_fraction": 0.25}, "data": {"augment": {"scale": [0.6, 1.5]}}}
    assert config_differences(stored, changed) == ["data.augment.scale", "loss.mmse_fraction"]


def test_runs_written_before_the_shared_vocabulary_still_requeue():
    """A checkpoint's stored config with train.amp / train.compile / train.progress equals today's config with
    precision / compile / progress, so resume=auto continues such a run (medrecon.options.RENAMED)."""
    from hydra import compose, initialize_config_dir

    from medrecon.cli import conf_dir
    from medrecon.train.resume import comparable_config, config_differences

    def current(*overrides):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return comparable_config(compose("train", ["manifest=m.jsonl", "out=run", *overrides]))

    def written_before(cfg, amp, progress=True):
        old = {k: v for k, v in cfg.items() if k not in ("precision", "compile", "progress")}
        old["train"] = {**cfg["train"], "amp": amp, "compile": cfg["compile"], "progress": progress}
        return old

    now = current()
    assert config_differences(written_before(now, amp=True), now) == []
    assert config_differences(written_before(now, amp=True, progress=False), now) == []  # a requeue key
    assert config_differences(written_before(now, amp=False), now) == ["precision"]
    assert config_differences(written_before(now, amp=False), current("precision=fp32")) == []
    assert config_differences(written_before(now, amp=True), current("compile=true")) == ["compile"]
    # a real run's stored training config (the bundled sr4x demo model's) against its recipe today
    from medrecon.checkpoint import read_metadata
    from medrecon.demo import demo_checkpoint

    stored = read_metadata(demo_checkpoint("sr4x"))["config"]
    differ = config_differences(stored, current("+experiment=demo_sr4x", f"manifest={stored['manifest']}"))
    assert not {"precision", "compile", "progress"} & set(differ), differ


def test_shared_options_reach_the_settings():
    settings = TrainSettings.from_cfg({"steps": 3}, precision="fp32", compile=True, progress=False)
    assert (settings.precision, settings.compile, settings.progress) == ("fp32", True, False)
    with pytest.raises(ValueError, match="train.amp was renamed: use precision=fp32"):
        TrainSettings.from_cfg({"amp": False})
    with pytest.raises(ValueError, match="precision='fp16' is not one of auto, bf16, fp32"):
        TrainSettings(precision="fp16")
    with pytest.raises(ValueError, match="progress='yes' must be true or false"):
        TrainSettings(progress="yes")


def test_dataloader_workers_do_not_change_what_is_trained(manifest, tmp_path):
    common = ("train.steps=2", "train.val_every=0")
    assert train(manifest, tmp_path / "w0", *common) == 0
    assert train(manifest, tmp_path / "w2", *common, "data.num_workers=2") == 0
    a = load_file(tmp_path / "w0" / "last.safetensors")
    b = load_file(tmp_path / "w2" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_3d_patches_train_validate_and_load(manifest, tmp_path):
    out = tmp_path / "p3"
    code = train(manifest, out, "data=patches3d", "data.patch_size=[16,16,8]", "train.steps=1", "val.steps=2")
    assert code == 0
    assert len(scalars(out, "val/psnr")) == 1
    loaded = load_checkpoint(out / "last.safetensors")
    assert loaded.spatial_dims == 3 and loaded.task.spatial_dims == 3 and loaded.task.scale == (4, 4, 1)


def test_loss_falls_on_a_tiny_overfit_set(manifest, tmp_path):
    out = tmp_path / "fit"
    code = train(
        manifest,
        out,
        "train.steps=40",
        "train.batch_size=4",
        "train.lr=2e-3",
        "train.warmup=5",
        "train.val_every=0",
        "train.ckpt_every=0",
        "loss.cond_drop_prob=0",
        "data.augment=null",
    )
    assert code == 0
    losses = scalars(out, "train/loss")
    assert len(losses) == 40
    first, last = float(np.mean(losses[:8])), float(np.mean(losses[-8:]))
    assert last < 0.6 * first, (first, last)


def test_non_finite_steps_are_skipped_counted_and_stop_training(manifest, tmp_path, monkeypatch):
    real = loop.batch_loss
    calls = {"n": 0, "all": False}

    def poisoned(*args):  # one call per step (accum=1): poison the second step, or every step
        loss = real(*args)
        calls["n"] += 1
        return loss * float("nan") if calls["all"] or calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "batch_loss", poisoned)
    out = tmp_path / "one_bad"
    assert train(manifest, out, "train.steps=3", "train.val_every=0", "train.ckpt_every=1") == 0
    state = load_state(out / "state_00000003.pt")
    assert state["bad_total"] == 1 and state["bad_in_row"] == 0
    assert scalars(out, "train/bad_steps") == [0.0, 1.0, 1.0]
    # every step bad: stop after max_bad_steps, weights untouched and finite
    calls.update(n=0, all=True)
    out = tmp_path / "all_bad"
    assert (
        train(
            manifest,
            out,
            "train.steps=10",
            "train.val_every=0",
            "train.ckpt_every=1",
            "train.max_bad_steps=3",
        )
        == 1
    )
    assert "non-finite steps in a row" in (out / "train.log").read_text()
    assert calls["n"] == 3
    weights = load_file(out / "ckpt_00000002.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "ckpt_00000003.safetensors").exists()
    for key in weights:  # no optimiser step happened: raw == EMA == the initial weights
        if key.startswith("raw."):
            assert torch.equal(weights[key], weights["ema." + key[4:]])


def test_usage_errors_exit_2(manifest, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert train(empty, tmp_path / "a", "train.steps=1") == 2
    assert train(manifest, tmp_path / "b", "train.steps=1", "data.train_split=test") == 2
    assert train(manifest, tmp_path / "c", "train.steps=1", "data.patch_size=20") == 2
    assert train(manifest, tmp_path / "d", "train.steps=0") == 2
    if not torch.cuda.is_available():
        assert train(manifest, tmp_path / "e", "train.steps=1", device="cuda") == 2


def test_resolve_device_and_settings():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    from medrecon.errors import UsageError

    with pytest.raises(UsageError, match="not one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown train option"):
        TrainSettings.from_cfg({"stepz": 3})
    with pytest.raises(ValueError, match="ema_decay"):
        TrainSettings(ema_decay=1.0)
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.slow
def test_two_process_gloo_ddp_run(manifest, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medrecon.cli",
        "train",
        f"manifest={manifest}",
        f"out={out}",
        "device=cpu",
        "data.patch_size=16",
        "train.steps=2",
        "train.batch_size=2",
        "train.val_every=0",
        "progress=false",
        "train.log_every=1",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-3000:]
    assert "2 process(es)" in (out / "train.log").read_text()
    state = load_state(out / "state_00000002.pt")
    assert state["world_size"] == 2 and state["data_position"] == 4  # per rank: 2 steps x batch 2
    assert load_checkpoint(out / "last.safetensors").step == 2


@pytest.mark.gpu
def test_cuda_training_with_bf16_channels_last_and_fused_adamw(manifest, tmp_path):
    out = tmp_path / "cuda"
    assert train(manifest, out, "train.steps=2", "train.val_every=2", "val.steps=2", device="cuda") == 0
    loaded = load_checkpoint(out / "last.safetensors", device="cuda")
    assert next(loaded.precond.parameters()).is_cuda
    assert scalars(out, "train/gpu_mem_gib")[-1] > 0 and len(scalars(out, "val/psnr")) == 1
