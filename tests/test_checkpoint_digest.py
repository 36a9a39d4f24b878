"""A checkpoint's identity is its content: ``checkpoint_digest`` and the resume decision of ``reconstruct``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrecon.checkpoint import ModelSpec, checkpoint_digest, save_checkpoint
from medrecon.cli import run_command
from medrecon.data.encoder import Encoder
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.recon.ledger import read_records
from medrecon.volume import Volume

SPEC = ModelSpec(
    model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
           "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
    task={"_target_": "medrecon.physics.SuperResolutionTask", "factor": 2, "spatial_dims": 2, "noise_std": 0.0},
    spatial_dims=2, image_channels=1, cond_channels=1,
)  # fmt: skip


def write(path, seed, step=3, config=None, ema_seed=None):
    """A tiny checkpoint whose weights are random (seeded), so outputs differ between seeds."""

    def weights(s):
        torch.manual_seed(s)
        precond = SPEC.build_precond()
        with torch.no_grad():
            for p in precond.parameters():
                p.add_(0.2 * torch.randn_like(p))
        return precond

    ema = None if ema_seed is None else weights(ema_seed)
    config = config or {"data": {"axis": 2}}
    return save_checkpoint(
        path, raw=weights(seed), ema=ema, spec=SPEC, encoder=Encoder(), config=config, step=step
    )


def test_digest_follows_the_weights_not_the_file(tmp_path):
    a = write(tmp_path / "a.safetensors", seed=0)
    same = write(tmp_path / "same.safetensors", seed=0, step=9, config={"other": 1})
    other = write(tmp_path / "other.safetensors", seed=1)
    assert a.stat().st_size == other.stat().st_size
    assert checkpoint_digest(a) == checkpoint_digest(same)  # step and stored config do not enter
    assert checkpoint_digest(a) != checkpoint_digest(other)
    assert checkpoint_digest(a, "raw") == checkpoint_digest(a, "ema")  # ema=None stores the raw weights twice
    two = write(tmp_path / "two.safetensors", seed=0, ema_seed=1)
    assert checkpoint_digest(two, "raw") == checkpoint_digest(a) != checkpoint_digest(two, "ema")


@pytest.fixture
def scan(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((12, 10, 2), np.float32)
    arr[2:-2, 2:-2] = 100 + 50 * rng.random((8, 6, 2))
    path = tmp_path / "scan.nii.gz"
    write_nifti(Volume(arr, np.diag([1.0, 1.0, 3.0, 1.0]), {}), path)
    return path


def test_rerun_skips_only_when_the_checkpoint_content_is_unchanged(scan, tmp_path):
    ckpt = write(tmp_path / "best.safetensors", seed=0)
    out = tmp_path / "out"
    args = ["progress=false", f"input={scan}", f"out={out}", f"checkpoint={ckpt}", "sampler.steps=2"]

    def rerun():
        assert run_command("reconstruct", args) == 0
        (rec,) = read_records(out / "run.jsonl")
        return rec.status, read_nifti(out / rec.outputs[0]).array

    status, first = rerun()
    assert status == "ok"
    assert rerun()[0] == "skipped"  # unchanged file
    size = ckpt.stat().st_size
    write(ckpt, seed=1)  # other weights, same name and size
    assert ckpt.stat().st_size == size
    status, second = rerun()
    assert status == "ok" and not np.allclose(first, second)  # recomputed with the new weights
    assert rerun()[0] == "skipped"
