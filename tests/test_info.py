"""``medrecon info``: the model card of a freshly trained checkpoint (with its training card), of the bundled demo
weights (both record their training spacing) and of a checkpoint written before the card existed ("not
recorded")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from medrecon.checkpoint import checkpoint_digest, read_metadata
from medrecon.cli import main
from medrecon.demo import demo_checkpoint
from medrecon.info import NOT_RECORDED, model_card, render
from medrecon.io.nifti import write_nifti
from medrecon.manifest import ManifestRecord, write_manifest
from medrecon.volume import Volume

SHAPES = {"train0": (24, 24, 12), "train1": (20, 24, 10), "val": (24, 24, 12)}
SPACINGS = {"train0": (1.0, 1.0, 2.0), "train1": (0.8, 1.0, 3.0), "val": (1.0, 1.0, 2.0)}


def phantom(shape, seed):
    rng = np.random.default_rng(seed)
    i, j, _ = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.where((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1, 100.0, 0.0) + rng.normal(0, 1, shape)
    return np.clip(vol, 0, None).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-step CPU training run on two MR volumes (validated at step 2): its last checkpoint."""
    root = tmp_path_factory.mktemp("info")
    records = []
    for n, (name, shape) in enumerate(SHAPES.items()):
        path = root / f"{name}.nii.gz"
        write_nifti(Volume(phantom(shape, n), np.diag([*SPACINGS[name], 1.0])), path)
        split = "val" if name == "val" else "train"
        records.append(
            ManifestRecord(f"s-{n:016x}", "nifti", [path], "MR", shape, SPACINGS[name], split, "ok")
        )
    manifest = write_manifest(root / "manifest.jsonl", records)
    out = root / "run"
    args = [
        "train", f"manifest={manifest}", f"out={out}", "task=sr4x", "model=unet_tiny", "device=cpu",
        "data.patch_size=16", "train.batch_size=2", "train.warmup=1", "progress=false",
        "train.steps=2", "train.val_every=2", "val.steps=2", "data.val_items=2",
    ]  # fmt: skip
    assert main(args) == 0
    return out / "last.safetensors"


def test_info_of_a_trained_checkpoint_shows_its_data_spacing_and_validation(trained, capsys):
    assert main(["info", f"checkpoint={trained}", "format=json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["file"] == "last.safetensors" and card["step"] == 2 and card["planned_steps"] == 2
    assert card["task"] == "medrecon.physics.SuperResolutionTask" and card["task_name"] == "sr4x"
    assert card["task_options"]["factor"] == 4
    assert card["network"] == "medrecon.nn.unet.UNet" and card["network_options"]["channels"] == [32, 64, 64]
    with safe_open(str(trained), framework="pt") as f:
        ema = [f.get_slice(k).get_shape() for k in f.keys() if k.startswith("ema.")]
    assert card["parameters"] == sum(int(np.prod(s)) for s in ema)
    assert card["spatial_dims"] == 2 and card["context"] == 0 and card["cond_channels"] == 1
    data = card["data"]
    assert data["volumes"] == 2 and data["modalities"] == {"MR": 2} and data["val_items"] == 2
    assert data["items"] > 0 and data["patch"] == [16, 16]
    assert data["shape_min"] == [20, 24, 10] and data["shape_max"] == [24, 24, 12]
    assert data["spacing_min"] == [0.8, 1.0, 2.0] and data["spacing_max"] == [1.0, 1.0, 3.0]
    assert data["spacing_median"] == [0.9, 1.0, 2.5]
    val = card["validation"]
    assert val["step"] == 2 and np.isfinite(val["psnr"]) and -1 <= val["ssim"] <= 1
    assert card["encoder"]["kind"] == "percentile"
    assert card["digests"] == {w: checkpoint_digest(trained, w) for w in ("ema", "raw")}
    text = json.dumps(card)
    assert "s-0000" not in text and str(trained.parent) not in text  # no ids, no folders

    assert main(["info", f"checkpoint={trained}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("spacing") and "median 0.9 x 1 x 2.5 mm" in line for line in lines)
    assert any(line.startswith("validation") and "best PSNR" in line for line in lines)
    assert NOT_RECORDED not in "\n".join(lines)


def test_training_card_survives_in_best_and_metadata(trained):
    card = read_metadata(trained.parent / "best.safetensors")["card"]
    assert card is not None and card.validation is not None and card.data.volumes == 2


def test_info_of_a_checkpoint_without_a_card_says_not_recorded(tmp_path, capsys):
    from test_fastmri_roundtrip import mri_checkpoint

    path = mri_checkpoint(tmp_path / "old.safetensors")  # as checkpoints were written before the card existed
    card = model_card(path)
    assert card.task_name == "mri_r4" and card.step == 1
    assert card.data is None and card.validation is None
    text = render(card)
    assert "training data  not recorded" in text and "validation     not recorded" in text
    assert main(["info", f"checkpoint={path}", "format=json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] is None and out["digests"]["ema"] == checkpoint_digest(path, "ema")


def test_info_usage_errors(tmp_path, capsys):
    assert main(["info"]) == 2  # checkpoint= is required
    assert main(["info", f"checkpoint={tmp_path / 'missing.safetensors'}"]) == 2
    assert main(["info", f"checkpoint={demo_checkpoint('sr4x')}", "format=yaml"]) == 2
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["info", f"checkpoint={junk}"]) == 2
    assert capsys.readouterr().out == ""  # errors go to stderr; stdout carries only cards


def test_info_of_the_retrained_sr4x_demo_shows_its_training_spacing():
    card = model_card(demo_checkpoint("sr4x"))
    text = render(card)
    assert card.step == 3200 and card.data is not None and 0 < card.validation["step"] <= 3200  # best step
    assert "spacing        median 2 x 2 x 2 mm" in text and "plane spacing  1.333-3.333 mm" in text


def test_info_of_the_retrained_mri_demo_shows_its_training_spacing():
    card = model_card(demo_checkpoint("mri_r4"))  # retrained 2026-11-30 without scale augmentation
    text = render(card)
    assert card.task_name == "mri_r4" and card.step == 3200 and card.parameters == 885_601
    assert "spacing        median 2 x 2 x 2 mm" in text and "plane spacing  2-2 mm" in text
