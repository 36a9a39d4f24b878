"""Checkpoints (safetensors + JSON metadata) and the training-state file (weights_only torch.load)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from medrecon import __version__
from medrecon.checkpoint import ModelSpec, load_checkpoint, read_metadata, redact_paths, save_checkpoint
from medrecon.data.encoder import Encoder
from medrecon.errors import UsageError
from medrecon.train.state import capture_rng, load_state, restore_rng, save_state

MODEL = {
    "_target_": "medrecon.nn.unet.UNet",
    "channels": [8, 16],
    "num_res_blocks": 1,
    "attention_levels": [False, True],
    "num_heads": 2,
    "dropout": 0.0,
}
TASK = {"_target_": "medrecon.physics.SuperResolutionTask", "factor": 2, "spatial_dims": 2, "noise_std": 0.0}


def spec(context=0):
    return ModelSpec(
        model=MODEL,
        task=TASK,
        spatial_dims=2,
        image_channels=1,
        cond_channels=2 * context + 1,
        context=context,
    )


@pytest.fixture
def saved(tmp_path):
    s = spec()
    torch.manual_seed(0)
    raw = s.build_precond()
    ema = s.build_precond()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.5)
    config = OmegaConf.create({"manifest": "/data/Jane_Doe_1970/scans.jsonl", "out": "/runs/x", "seed": 3})
    enc = Encoder(low=1.0, high=9.0)
    path = save_checkpoint(
        tmp_path / "ckpt.safetensors", raw=raw, ema=ema, spec=s, encoder=enc, config=config, step=42
    )
    return path, raw, ema, enc


def test_checkpoint_round_trip_loads_ema_or_raw_weights(saved):
    path, raw, ema, enc = saved
    loaded = load_checkpoint(path)
    assert loaded.weights == "ema" and loaded.step == 42 and loaded.spatial_dims == 2 and loaded.context == 0
    for (name, p), q in zip(loaded.precond.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(p, q), name
    assert not loaded.precond.training
    assert loaded.encoder == enc and loaded.task.scale == (2, 2) and loaded.config.seed == 3
    raw_loaded = load_checkpoint(path, weights="raw")
    for p, q in zip(raw_loaded.precond.state_dict().values(), raw.state_dict().values()):
        assert torch.equal(p, q)
    x = torch.randn(2, 1, 8, 8)
    out = loaded.precond(x, torch.full((2,), 0.5), loaded.task.condition(loaded.task.degrade(x)))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_checkpoint_metadata_has_config_spec_encoder_and_no_folder_names(saved):
    path = saved[0]
    meta = read_metadata(path)
    assert meta["medrecon_version"] == __version__ and meta["step"] == 42
    assert meta["spec"]["model"] == MODEL and meta["spec"]["task"] == TASK
    assert meta["param_count"] == sum(p.numel() for p in saved[1].parameters())
    assert meta["config"]["manifest"] == "scans.jsonl"  # folders (which may be named after people) dropped
    assert b"Jane_Doe" not in path.read_bytes()
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("raw.") for k in keys) and any(k.startswith("ema.") for k in keys)
    assert redact_paths({"a": ["C:\\x\\y.txt", "dpmpp"]}) == {"a": ["y.txt", "dpmpp"]}


def test_non_finite_weights_are_never_written(tmp_path):
    s = spec()
    raw = s.build_precond()
    with torch.no_grad():
        next(raw.parameters())[0] = float("nan")
    dest = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="non-finite"):
        save_checkpoint(dest, raw=raw, ema=None, spec=s, encoder=Encoder(low=0, high=1), config={}, step=1)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


def test_loading_a_file_that_is_not_a_checkpoint_is_a_usage_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="not a safetensors"):
        load_checkpoint(junk)
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(other))
    with pytest.raises(UsageError, match="not a medrecon checkpoint"):
        load_checkpoint(other)


def test_context_spec_builds_a_wider_network(tmp_path):
    s = spec(context=2)
    precond = s.build_precond()
    assert precond.cond_channels == 5 and precond.net.in_channels == 6


def test_training_state_round_trips_with_weights_only_and_restores_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)  # noqa: NPY002 (global RNGs)
    rng = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    path = save_state(tmp_path / "state_00000001.pt", {"step": 1, "optimizer": opt.state_dict(), "rng": rng})
    state = load_state(path)  # torch.load(weights_only=True) inside
    assert state["step"] == 1
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(state["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    restore_rng(state["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])  # noqa: NPY002
    assert random.random() == expected[2]
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a medrecon training state"):
        load_state(tmp_path / "x.pt")
