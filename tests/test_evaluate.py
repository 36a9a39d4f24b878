"""`medrecon evaluate` on CPU: reports, figures, held-out slices, numbers equal to a direct recomputation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import synth_dicom as sd
import torch
from omegaconf import OmegaConf

from medrecon.baselines import get_baseline
from medrecon.checkpoint import ModelSpec, save_checkpoint
from medrecon.cli import run_command
from medrecon.data.encoder import Encoder, build_encoder
from medrecon.evaluate.metrics import METRIC_NAMES, volume_metrics
from medrecon.evaluate.report import read_metrics_csv
from medrecon.io.archive import load_item
from medrecon.io.nifti import write_nifti
from medrecon.manifest import read_manifest
from medrecon.physics.registry import build_task, task_config
from medrecon.recon.measure import degrade_units, unit_seeds
from medrecon.volume import Volume

PHI = ("Doe^Jane", "Doe", "Jane", "12345678")


def _phantom(shape, seed):
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disk = ((i - shape[0] / 2) ** 2 + (j - shape[1] / 2) ** 2 < (0.35 * shape[0]) ** 2).astype(np.float32)
    arr = disk[..., None] * (200 + 40 * rng.random(shape)) + 5 * rng.random(shape)
    return arr.astype(np.float32)


def _set_phi(ds, k):
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345678"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Two NIfTI volumes and one DICOM series (with names in it), all in the test split."""
    root = tmp_path_factory.mktemp("eval_archive")
    for n in range(2):
        write_nifti(
            Volume(_phantom((16, 16, 8), n), np.diag([0.9, 0.9, 2.0, 1.0]), {}), root / f"v{n}.nii.gz"
        )
    stored = (_phantom((16, 16, 8), 7).transpose(2, 1, 0)).astype(np.uint16)
    sd.write_series(root / "series", shape=(16, 16, 8), stored=stored, edit=_set_phi)
    path = root / "manifest.jsonl"
    args = [f"input={root}", f"manifest={path}", "split.train=0.0", "split.val=0.0", "split.test=1.0"]
    assert run_command("prepare", args) == 0
    return path


def make_checkpoint(path, task="sr2x", config=None):
    spec = ModelSpec(
        model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
               "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
        task=task_config(task), spatial_dims=2, image_channels=1, cond_channels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_checkpoint(path, raw=spec.build_precond(), ema=None, spec=spec, encoder=Encoder(),
                           config=OmegaConf.create(config or {"data": {"axis": 2}}), step=3)  # fmt: skip


def evaluate(*overrides):
    return run_command("evaluate", [str(o) for o in overrides])


@pytest.fixture(scope="module")
def baseline_eval(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_baselines")
    assert evaluate(f"manifest={manifest}", f"out={out}", "task=sr2x") == 0
    return out


def test_baseline_report_files(baseline_eval):
    out = baseline_eval
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sr2x" and report["items"] == 3
    assert list(report["methods"]) == [
        "input",
        "bicubic",
        "tv",
    ]  # default methods, no diffusion without a model
    assert any("diffusion" in n for n in report["notes"])
    rows = read_metrics_csv(out / "metrics.csv")
    assert len(rows) == 9 and {r["slices"] for r in rows} == {8}
    for method, entry in report["methods"].items():
        mine = [r for r in rows if r["method"] == method]
        for name in METRIC_NAMES:
            values = np.array([r[name] for r in mine])
            assert entry[name] == pytest.approx(values.mean(), rel=1e-9)
            assert entry[f"{name}_std"] == pytest.approx(values.std(ddof=1), rel=1e-9)
    md = (out / "report.md").read_text()
    assert "| sr2x | bicubic | 3 |" in md and "±" in md
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 2 and all(0 < p.stat().st_size < 100_000 for p in pngs)
    assert all(f"figures/{p.name}" in md for p in pngs)


def test_numbers_equal_a_direct_recomputation(baseline_eval, manifest):
    rows = {(r["id"], r["method"]): r for r in read_metrics_csv(baseline_eval / "metrics.csv")}
    task = build_task("sr2x")
    encoder_cfg = {"kind": "auto", "fit": "per_volume", "low_pct": 0.5, "high_pct": 99.5, "clip": True}
    for record in read_manifest(manifest):
        if record.status != "ok":
            continue
        gt = load_item(record).array  # (16, 16, 8): slices along axis 2, divisible by 2 in-plane
        enc = build_encoder(encoder_cfg, record.modality).for_volume(gt)
        x = torch.from_numpy(enc.encode(np.moveaxis(gt, 2, 0)))[:, None]
        meas = degrade_units(task, x, unit_seeds(record.id, 8, 0, "degrade"))
        for method in ("input", "bicubic"):
            pred = np.moveaxis(enc.decode(get_baseline(method)(task, meas)[:, 0].numpy()), 0, 2)
            expected = volume_metrics(gt, pred, slice_axis=2).as_dict()
            for name, value in expected.items():
                assert rows[record.id, method][name] == pytest.approx(value, rel=1e-6), (method, name)


def test_no_patient_identifiers_in_reports(baseline_eval):
    for path in baseline_eval.rglob("*"):
        assert not any(word in path.name for word in PHI)
        if path.is_file() and path.suffix in (".json", ".md", ".csv", ".log", ".yaml"):
            assert not any(word in path.read_text() for word in PHI), path.name


def test_diffusion_on_held_out_slices_with_uncertainty(manifest, tmp_path, monkeypatch):
    from medrecon.evaluate import figures

    panels = []
    real = figures.save_panel
    monkeypatch.setattr(figures, "save_panel", lambda path, **kw: panels.append(kw) or real(path, **kw))
    split = {"axis": 2, "val": 0.125, "test": 0.25, "gap": 1}  # 8 slices: train 0-2, val 4, test 6-7
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors", config={"data": {"axis": 2, "slice_split": split}})
    out = tmp_path / "out"
    args = [f"manifest={manifest}", f"out={out}", f"checkpoint={ckpt}", "sampler.steps=2", "samples=2"]
    assert evaluate(*args, "methods=[bicubic,diffusion]", "split=test", "figures.volumes=1") == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["bicubic", "diffusion"] and report["items"] == 3
    assert report["config"]["selection"]["slice_split"] == {**split, "end": 1.0}
    rows = read_metrics_csv(out / "metrics.csv")
    assert len(rows) == 6 and {r["slices"] for r in rows} == {2}
    assert all(np.isfinite(r["psnr"]) for r in rows)
    (png,) = (out / "figures").glob("*.png")
    assert png.name.endswith("_slice001.png")  # the middle of the two held-out slices
    (panel,) = panels
    assert list(panel["images"]) == ["input", "bicubic", "diffusion"] and panel["error_of"] == "diffusion"
    assert panel["uncertainty"].shape == panel["ground_truth"].shape == (16, 16)


def test_explicit_slices_and_inapplicable_methods(manifest, tmp_path):
    out = tmp_path / "out"
    args = [f"manifest={manifest}", f"out={out}", "task=sr2x", "methods=[input,nlm,zero_filled]"]
    assert evaluate(*args, "slices=[2,5]", "figures.volumes=0") == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["input"]
    assert sum(("nlm" in n or "zero_filled" in n) and "skipped" in n for n in report["notes"]) == 2
    assert {r["slices"] for r in read_metrics_csv(out / "metrics.csv")} == {3}
    assert not (out / "figures").exists()


def test_evaluate_usage_errors(manifest, tmp_path):
    assert evaluate(f"manifest={manifest}", f"out={tmp_path}/a", "task=sr2x", "methods=[diffusion]") == 2
    assert evaluate(f"manifest={manifest}", f"out={tmp_path}/b") == 2  # neither task nor checkpoint
    assert evaluate(f"manifest={tmp_path}/none.jsonl", f"out={tmp_path}/c", "task=sr2x") == 2
    assert evaluate(f"manifest={tmp_path}/none.jsonl", f"out={tmp_path}/e") == 2
    assert "none.jsonl does not exist" in (tmp_path / "e" / "evaluate.log").read_text()
    assert (
        evaluate(f"manifest={manifest}", f"out={tmp_path}/d", "task=sr2x", "split=train") == 2
    )  # empty split


def test_figures_leave_the_matplotlib_backend_alone(tmp_path):
    """A notebook's backend (inline, widget, ...) survives importing and using medrecon's figure code."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import numpy as np\n"
        "import medrecon.evaluate.figures as f, medrecon.evaluate.run\n"
        "g = np.random.default_rng(0).random((16, 12)).astype('float32')\n"
        f"f.save_panel({str(tmp_path / 'p.png')!r}, ground_truth=g, images={{'bicubic': g * 0.9}})\n"
        "import matplotlib.pyplot as plt\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["svg", "0"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
