"""Spacing awareness in reconstruct and evaluate: inputs far from the in-plane spacing a model was trained at
are flagged (log, run.jsonl, report), judged on the grid the network works on (the output grid), and
``spacing=auto`` resamples them to the training spacing and back to their native grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medrecon.card import DataSummary, TrainingCard, training_plane_spacing
from medrecon.checkpoint import ModelSpec, save_checkpoint
from medrecon.cli import run_command
from medrecon.data.encoder import Encoder
from medrecon.info import model_card, render
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.manifest import ManifestRecord, write_manifest
from medrecon.physics.registry import task_config
from medrecon.recon.geometry import upsampled_affine
from medrecon.recon.ledger import read_records
from medrecon.recon.run import settings_key
from medrecon.recon.slicing import Layout
from medrecon.recon.spacing import SpacingPolicy
from medrecon.volume import Volume

TRAINED_MM = 2.0


def card(plane=(TRAINED_MM, TRAINED_MM)) -> TrainingCard:
    """A training card of 2 mm volumes (what ``medrecon train`` records)."""
    spacing = (TRAINED_MM, TRAINED_MM, 3.0)
    return TrainingCard(
        data=DataSummary(
            volumes=2, items=40, val_items=2, modalities={"MR": 2}, shape_min=(32, 32, 20),
            shape_max=(32, 32, 20), spacing_median=spacing, spacing_min=spacing, spacing_max=spacing,
            patch=(16, 16), plane_spacing=plane,
        )
    )  # fmt: skip


def make_checkpoint(path, task="denoise", with_card=True):
    """A random-weight tiny U-Net for ``task`` that says it was trained on 2 mm volumes (or says nothing)."""
    cond = 2 if task.startswith("mri") else 1
    spec = ModelSpec(
        model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
               "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
        task=task_config(task), spatial_dims=2, image_channels=1, cond_channels=cond,
    )  # fmt: skip
    torch.manual_seed(0)
    precond = spec.build_precond()
    with torch.no_grad():
        for param in precond.parameters():
            param.add_(0.1 * torch.randn_like(param))
    config = OmegaConf.create({"data": {"axis": 2}})
    return save_checkpoint(
        path, raw=precond, ema=None, spec=spec, encoder=Encoder(), config=config, step=3,
        card=card() if with_card else None,
    )  # fmt: skip


def mr_volume(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    disk = ((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1).astype(np.float32)
    return (disk[..., None] * (100 + 20 * rng.random(shape)) + rng.random(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A 0.3 mm scan and a 2 mm scan (in plane; 3 mm slices), as NIfTI files and a test-split manifest."""
    root = tmp_path_factory.mktemp("spacing_scans")
    (root / "scans").mkdir()
    paths = {}
    for n, (name, mm) in enumerate((("fine", 0.3), ("native", TRAINED_MM))):
        paths[name] = root / "scans" / f"{name}.nii.gz"
        write_nifti(Volume(mr_volume((24, 20, 3), n), np.diag([mm, mm, 3.0, 1.0])), paths[name])
    records = [
        ManifestRecord(f"s-{name}", "nifti", [path], "MR", (24, 20, 3), (mm, mm, 3.0), "test", "ok")
        for (name, path), mm in zip(paths.items(), (0.3, TRAINED_MM))
    ]
    return paths, write_manifest(root / "manifest.jsonl", records)


@pytest.fixture(scope="module")
def denoise_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "denoise.safetensors")


@pytest.fixture(scope="module")
def sr_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "sr2x.safetensors", task="sr2x")


def reconstruct(*overrides):
    return run_command(
        "reconstruct", ["progress=false", "sampler=ddim", "sampler.steps=2", *map(str, overrides)]
    )


def by_input(out, name):
    return next(r for r in read_records(out / "run.jsonl") if any(name in p for p in r.input))


# ---- the rule ---------------------------------------------------------------------------------------------------
def test_inputs_are_judged_on_the_output_grid_in_plane():
    policy = SpacingPolicy("native", (TRAINED_MM, TRAINED_MM))
    assert policy.band == pytest.approx((TRAINED_MM / 1.5, TRAINED_MM * 1.5))
    plane = Layout(2, 2)

    def outside(affine, layout=plane):
        return policy.inspect("x", affine, (8, 8, 8), layout).outside

    assert outside(np.diag([0.3, 0.3, 3.0, 1.0])) and not outside(np.diag([2.0, 2.0, 9.0, 1.0]))
    assert not outside(np.diag([1.4, 2.9, 0.1, 1.0]))  # the slice axis is not compared
    assert outside(np.diag([2.0, 2.0, 0.3, 1.0]), Layout(2, 0))  # slices across axis 0: J and K in plane
    assert outside(np.diag([2.0, 3.1, 2.0, 1.0]))  # each plane axis on its own
    # super-resolution x2: a 4 mm input is reconstructed on a 2 mm grid (fine); a 2 mm input on a 1 mm grid
    assert not outside(upsampled_affine(np.diag([4.0, 4.0, 3.0, 1.0]), (2, 2, 1)))
    assert outside(upsampled_affine(np.diag([2.0, 2.0, 3.0, 1.0]), (2, 2, 1)))
    assert (
        not SpacingPolicy("native", None).inspect("x", np.diag([0.1] * 3 + [1.0]), (8, 8, 8), plane).outside
    )
    assert not policy.inspect("x", None, None, plane).outside  # spacing unknown (k-space without it)
    auto = SpacingPolicy("auto", (1.0, 2.0)).inspect("x", np.diag([0.3, 5.0, 1.0, 1.0]), (30, 6, 4), plane)
    assert auto.target == (1.0, 2.0) and auto.native == (30, 6)  # each axis to the nearest training spacing
    units = torch.zeros(4, 1, 30, 6)
    assert auto.to_model(units).shape == (4, 1, 9, 15) and auto.to_native(torch.zeros(4, 1, 9, 15)).shape == (
        4, 1, 30, 6,
    )  # fmt: skip


def test_training_spacing_from_old_cards_and_configs():
    assert training_plane_spacing(None, {}, 2) is None
    assert training_plane_spacing(TrainingCard(), {}, 2) is None
    assert training_plane_spacing(card(), {}, 2) == (TRAINED_MM, TRAINED_MM)
    old = card(plane=None)  # written before plane_spacing: the volumes' spacing along the stored axis's plane
    assert training_plane_spacing(old, {"data": {"axis": 2}}, 2) == (TRAINED_MM, TRAINED_MM)
    assert training_plane_spacing(old, {"data": {"axis": "all"}}, 2) == (TRAINED_MM, 3.0)
    assert training_plane_spacing(old, {}, 3) == (TRAINED_MM, TRAINED_MM)


def test_info_shows_the_training_spacing_and_the_band(denoise_ckpt, tmp_path):
    shown = model_card(denoise_ckpt)
    assert shown.plane_spacing == [TRAINED_MM, TRAINED_MM]
    assert shown.spacing_band == pytest.approx([TRAINED_MM / 1.5, TRAINED_MM * 1.5])
    assert "plane spacing  2-2 mm seen in training" in render(shown) and "outside 1.333-3 mm" in render(shown)
    bare = model_card(make_checkpoint(tmp_path / "bare.safetensors", with_card=False))
    assert bare.plane_spacing is None and "plane spacing  not recorded" in render(bare)


# ---- reconstruct -----------------------------------------------------------------------------------------------
def test_a_03mm_input_is_flagged_for_a_2mm_model_and_a_2mm_one_is_not(scans, denoise_ckpt, tmp_path):
    paths, _ = scans
    out = tmp_path / "out"
    assert reconstruct(f"input={paths['fine'].parent}", f"out={out}", f"checkpoint={denoise_ckpt}") == 0
    fine, native = by_input(out, "fine.nii.gz"), by_input(out, "native.nii.gz")
    assert fine.status == native.status == "ok"
    assert "in-plane spacing 0.3 x 0.3 mm (output grid) is outside 1.33-3 mm" in fine.detail
    assert "trained at 2-2 mm" in fine.detail and "native grid" in fine.detail
    assert native.detail == ""
    log = (out / "reconstruct.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and fine.id in warnings[0] and "outside" in warnings[0]
    assert str(paths["fine"].parent) not in warnings[0]  # ids only, never a path
    assert "trained at in-plane spacing 2-2 mm" in log


def test_super_resolution_compares_the_output_grid(scans, sr_ckpt, tmp_path):
    """sr2x trained on 2 mm ground truth: a 2 mm input becomes a 1 mm reconstruction (flagged), a 4 mm input a
    2 mm one (not flagged), although the 4 mm input is twice the training spacing."""
    root = tmp_path / "in"
    root.mkdir()
    for name, mm in (("two", 2.0), ("four", 4.0)):
        write_nifti(Volume(mr_volume((12, 10, 2)), np.diag([mm, mm, 3.0, 1.0])), root / f"{name}.nii.gz")
    out = tmp_path / "out"
    assert reconstruct(f"input={root}", f"out={out}", f"checkpoint={sr_ckpt}", "method=bicubic") == 0
    assert "1 x 1 mm (output grid) is outside" in by_input(out, "two.nii.gz").detail
    assert by_input(out, "four.nii.gz").detail == ""


@pytest.mark.parametrize("task", ["denoise", "sr2x"])
def test_spacing_auto_reconstructs_on_the_native_grid(scans, denoise_ckpt, sr_ckpt, tmp_path, task):
    paths, _ = scans
    ckpt = denoise_ckpt if task == "denoise" else sr_ckpt
    factor = 1 if task == "denoise" else 2
    outs = {}
    for mode in ("native", "auto"):
        out = tmp_path / mode
        assert (
            reconstruct(f"input={paths['fine']}", f"out={out}", f"checkpoint={ckpt}", f"spacing={mode}") == 0
        )
        (record,) = read_records(out / "run.jsonl")
        outs[mode] = (record, read_nifti(out / record.outputs[0]))
    (record, auto), (_, native) = outs["auto"], outs["native"]
    assert auto.shape == native.shape == (24 * factor, 20 * factor, 3)
    np.testing.assert_allclose(auto.affine, native.affine)
    assert np.isfinite(auto.array).all() and not np.allclose(auto.array, native.array)
    target = f"{TRAINED_MM:.3g} x {TRAINED_MM:.3g}"
    assert f"resampled to {target} mm for the network and back (spacing=auto)" in record.detail
    assert record.settings != outs["native"][0].settings  # a finished native item is redone under auto


def test_spacing_auto_keeps_items_inside_the_band_and_without_a_card(scans, denoise_ckpt, tmp_path):
    paths, _ = scans
    bare = make_checkpoint(tmp_path / "bare.safetensors", with_card=False)
    runs = {}
    for name, ckpt, item in (("in_band", denoise_ckpt, "native"), ("no_card", bare, "fine")):
        for mode in ("native", "auto"):
            out = tmp_path / f"{name}_{mode}"
            assert (
                reconstruct(f"input={paths[item]}", f"out={out}", f"checkpoint={ckpt}", f"spacing={mode}")
                == 0
            )
            (record,) = read_records(out / "run.jsonl")
            assert record.detail == ""
            runs[name, mode] = read_nifti(out / record.outputs[0]).array
        np.testing.assert_array_equal(runs[name, "auto"], runs[name, "native"])
    assert "no training spacing is known" in (tmp_path / "no_card_auto" / "reconstruct.log").read_text()


def test_spacing_options_are_checked(scans, denoise_ckpt, tmp_path, capfd):
    paths, _ = scans
    mri = make_checkpoint(tmp_path / "mri.safetensors", task="mri_r4")
    common = [f"input={paths['fine']}", f"out={tmp_path / 'o'}"]
    assert reconstruct(*common, f"checkpoint={mri}", "spacing=auto") == 2
    assert "spacing=auto is not defined for the MRI task mri_r4" in capfd.readouterr().out
    assert reconstruct(*common, f"checkpoint={denoise_ckpt}", "spacing=training") == 2
    assert reconstruct(*common, f"checkpoint={denoise_ckpt}", "spacing_tolerance=0.5") == 2


def test_native_runs_keep_their_settings_hash():
    """Runs finished before the option existed are still skipped by a rerun with spacing=native."""
    base = {"method": "input", "samples": 1, "seed": 0, "weights": "ema", "axis": None, "checkpoint": None}
    before = settings_key(OmegaConf.create(base), "input", None)
    assert settings_key(OmegaConf.create({**base, "spacing": "native"}), "input", None) == before
    assert settings_key(OmegaConf.create({**base, "spacing": "auto"}), "input", None) != before


# ---- evaluate ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["native", "auto"])
def test_evaluate_reports_the_training_spacing_and_flagged_volumes(scans, denoise_ckpt, tmp_path, mode):
    _, manifest = scans
    out = tmp_path / mode
    args = [f"manifest={manifest}", f"out={out}", f"checkpoint={denoise_ckpt}", "methods=[input,diffusion]"]
    assert run_command("evaluate", [*args, "sampler=ddim", "sampler.steps=2", f"spacing={mode}"]) == 0
    report = json.loads((out / "report.json").read_text())
    spacing = report["config"]["spacing"]
    assert spacing["mode"] == mode and spacing["training_mm"] == [TRAINED_MM, TRAINED_MM]
    assert spacing["band_mm"] == pytest.approx([TRAINED_MM / 1.5, TRAINED_MM * 1.5])
    assert [f["id"] for f in spacing["outside"]] == ["s-fine"]
    assert spacing["outside"][0]["spacing_mm"] == pytest.approx([0.3, 0.3])
    resampled = spacing["outside"][0]["resampled_to_mm"]
    assert resampled == (None if mode == "native" else [TRAINED_MM, TRAINED_MM])
    (note,) = [n for n in report["notes"] if n.startswith("in-plane spacing")]
    assert "trained at 2-2 mm" in note and "1 of 2 volume(s)" in note and "s-fine (0.3 x 0.3 mm)" in note
    assert (
        report["methods"]["diffusion"]["volumes"] == 2
    )  # both scored (auto: back on the ground truth's grid)


def test_the_check_script_gives_the_demo_weights_their_training_card(tmp_path, monkeypatch):
    """scripts/spacing_check.py evaluates a copy of the demo weights that records 2 mm training volumes."""
    from pathlib import Path

    from medrecon.checkpoint import checkpoint_digest
    from medrecon.demo import demo_checkpoint

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import spacing_check

    path = spacing_check.carded_demo(tmp_path)
    shown = model_card(path)
    assert shown.plane_spacing == [2.0, 2.0] and tuple(shown.data["spacing_median"]) == (2.0, 2.0, 2.0)
    for weights in ("ema", "raw"):  # the same weights, spec and encoder: only the card is new
        assert checkpoint_digest(path, weights) == checkpoint_digest(demo_checkpoint("sr4x"), weights)
