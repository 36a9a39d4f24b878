"""The demo: the simulated low-resolution series, and `medrecon demo` end to end with a tiny checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest

from medrecon.cli import main
from medrecon.demo import demo_checkpoint, write_lowres_series
from medrecon.io.dicom import read_dicom_dir
from medrecon.physics import SuperResolutionTask
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


def test_demo_weights_ship_with_the_package():
    path = demo_checkpoint("sr4x")
    assert path.is_file() and path.stat().st_size < 25 * 2**20
    with pytest.raises(ValueError, match="no demo model"):
        demo_checkpoint("denoise3d")


@pytest.mark.slow
def test_demo_end_to_end_with_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample-data", "out=archive", "resolution_mm=4"]) == 0
    assert main(["prepare", "input=archive/nifti", "manifest=m.jsonl"]) == 0
    train = [
        "train", "+experiment=demo_sr4x", "manifest=m.jsonl", "out=run", "train.steps=2", "train.warmup=1",
        "train.val_every=0", "train.progress=false", "data.patch_size=32", "device=cpu",
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
