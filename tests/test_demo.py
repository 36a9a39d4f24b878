"""The demo: the simulated low-resolution series, and `medrecon demo` end to end with a tiny checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medrecon.cli import main
from medrecon.demo import demo_checkpoint, sampler_overrides, verdict, write_kspace_h5, write_lowres_series
from medrecon.io.dicom import read_dicom_dir
from medrecon.io.kspace_h5 import read_kspace_h5
from medrecon.io.nifti import read_nifti
from medrecon.physics import MRITask, SuperResolutionTask
from medrecon.physics.fft import fft2c
from medrecon.recon.geometry import bounding_box
from medrecon.sample import sample_volume


def test_lowres_series_is_the_task_forward_on_the_same_field_of_view(tmp_path):
    truth = sample_volume(4)  # (40, 48, 41) at 4 mm
    task = SuperResolutionTask(factor=4)
    write_lowres_series(truth, task, tmp_path / "low")
    low = read_dicom_dir(tmp_path / "low")
    assert low.shape == (10, 12, truth.shape[2])
    # block means of 4x4 in-plane voxels, within the DICOM writer's quantisation
    expected = truth.array.reshape(10, 4, 12, 4, -1).mean(axis=(1, 3))
    np.testing.assert_allclose(low.array, expected, atol=1e-2 * float(truth.array.max()))
    # the coarse grid covers exactly the fine grid's box (outer voxel faces), voxels 4x larger in-plane
    np.testing.assert_allclose(
        np.sort(bounding_box(low.affine, low.shape), axis=0),
        np.sort(bounding_box(truth.affine, truth.shape), axis=0),
        atol=1e-3,
    )
    np.testing.assert_allclose(low.spacing, (16.0, 16.0, 4.0), atol=1e-4)


def test_kspace_acquisition_is_the_masked_fourier_transform_on_the_same_grid(tmp_path):
    truth = sample_volume(4)  # (40, 48, 41) at 4 mm
    path = write_kspace_h5(truth, MRITask(acceleration=4), tmp_path / "scan.h5", seed=3)
    data = read_kspace_h5(path)
    assert data.kspace.shape == (41, 48, 40) and data.mask.shape == (40,) and data.target is None
    assert data.info.volume_shape == truth.shape and data.info.volume_spacing == pytest.approx(truth.spacing)
    # fastMRI's layout: slice k is the image (rows J, columns I); phase encoding (the mask) along the columns
    full = fft2c(torch.from_numpy(np.ascontiguousarray(truth.array.transpose(2, 1, 0))).to(torch.complex64))
    sampled = data.mask.astype(bool)
    np.testing.assert_allclose(data.kspace[..., sampled], full.numpy()[..., sampled], rtol=1e-5, atol=1e-3)
    assert not np.any(data.kspace[..., ~sampled])
    centre = MRITask(acceleration=4).mask_func.center_mask(40).numpy().astype(bool)
    assert sampled.sum() == round(40 / 4) and centre.any() and sampled[centre].all()  # R=4, centre sampled
    again = read_kspace_h5(write_kspace_h5(truth, MRITask(acceleration=4), tmp_path / "b.h5", seed=3))
    np.testing.assert_array_equal(again.mask, data.mask)  # the mask follows the seed


def test_demo_takes_every_option_its_docs_name(capsys):
    args = ["demo", "task=mri_r4", "sampler=ddim", "sampler.steps=3", "sampler.eta=0.5", "samples=2"]
    assert main([*args, "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["task"]["acceleration"] == 4 and cfg["samples"] == 2
    assert sampler_overrides(cfg["sampler"]) == ["sampler=ddim", "sampler.steps=3", "sampler.eta=0.5"]
    assert sampler_overrides(cfg["sampler"], steps=7)[:2] == ["sampler=ddim", "sampler.steps=7"]
    assert main(["demo", "steps=2", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert sampler_overrides(cfg["sampler"], cfg["steps"]) == ["sampler=mmse", "sampler.steps=2"]
    assert main(["demo", "task=denoise", "out=unused"]) == 2  # no bundled model for it
    assert "no demo model for task='denoise'" in capsys.readouterr().out


def test_verdict_names_the_tasks_reference_baseline():
    ours, low = {"psnr": 30.0, "ssim": 0.9}, {"psnr": 20.0, "ssim": 0.7}
    mri = {"zero_filled": low, "tv": ours, "diffusion": ours}
    sr = {"input": low, "bicubic": ours, "diffusion": ours}
    assert verdict(mri).startswith("diffusion beats zero_filled")
    assert verdict(sr).startswith("diffusion does not beat bicubic")
    assert verdict({"tv": low}) == ""


def test_demo_weights_ship_with_the_package():
    path = demo_checkpoint("sr4x")
    assert path.is_file() and path.stat().st_size < 25 * 2**20
    assert demo_checkpoint("mri_r4").is_file()
    with pytest.raises(ValueError, match="no demo model"):
        demo_checkpoint("denoise3d")


@pytest.mark.slow
def test_demo_end_to_end_with_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample-data", "out=archive", "resolution_mm=4"]) == 0
    assert main(["prepare", "input=archive/nifti", "manifest=m.jsonl"]) == 0
    train = [
        "train", "+experiment=demo_sr4x", "manifest=m.jsonl", "out=run", "train.steps=2", "train.warmup=1",
        "train.val_every=0", "progress=false", "data.patch_size=32", "device=cpu",
    ]  # fmt: skip
    assert main(train) == 0
    code = main(["demo", "out=demo", "checkpoint=run/last.safetensors", "resolution_mm=4", "steps=2"])
    assert code == 0
    out = Path("demo")
    recon = [json.loads(line) for line in (out / "recon" / "run.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recon] == ["ok"]
    nifti = out / "recon" / f"{recon[0]['id']}.nii.gz"
    assert nifti.is_file() and list((out / "recon" / "dicom" / recon[0]["id"]).glob("*.dcm"))
    report = json.loads((out / "eval" / "report.json").read_text())
    assert {"input", "bicubic", "tv", "diffusion"} <= set(report["methods"])
    assert all(np.isfinite(m["psnr"]) for m in report["methods"].values())
    assert list((out / "eval" / "figures").glob("*.png"))


@pytest.mark.slow
def test_demo_runs_the_bundled_mri_model_on_simulated_kspace(tmp_path, monkeypatch):
    """task=mri_r4: undersampled k-space (a fastMRI file) is reconstructed; the held-out slab is evaluated."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "task=mri_r4", "out=demo", "resolution_mm=4", "steps=1", "device=cpu"]) == 0
    out = Path("demo")
    assert [p.name for p in (out / "kspace").iterdir()] == ["mni_t1_mri_r4.h5"]
    (record,) = [json.loads(line) for line in (out / "recon" / "run.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["input"][0].endswith("mni_t1_mri_r4.h5")
    truth = read_nifti(out / "archive" / "nifti" / "mni_t1.nii.gz")
    recon = read_nifti(out / "recon" / f"{record['id']}.nii.gz")
    assert recon.shape == truth.shape and recon.spacing == pytest.approx(truth.spacing)
    # the reconstruction is the scan (not a transposed or shifted copy): close to it in relative L1
    assert np.abs(recon.array - truth.array).mean() < 0.3 * np.abs(truth.array).mean()
    methods = json.loads((out / "eval" / "report.json").read_text())["methods"]
    assert {"zero_filled", "tv", "diffusion"} <= set(methods)
    assert methods["diffusion"]["psnr"] > methods["zero_filled"]["psnr"]
