"""The Python API (``medrecon.api``): the same set-up, seeds and numbers as the commands, light imports,
matplotlib's backend left alone, errors as ``UsageError``."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import medrecon
from medrecon.api import evaluate
from medrecon.cli import run_command
from medrecon.demo import demo_checkpoint
from medrecon.errors import UsageError
from medrecon.evaluate.report import read_metrics_csv
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.physics.base import OperatorParams
from medrecon.volume import Volume

ROOT = Path(__file__).resolve().parents[1]


def _truth(shape=(32, 32, 4), seed=0):
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[: shape[0], : shape[1]]
    disk = ((i - shape[0] / 2) ** 2 + (j - shape[1] / 2) ** 2 < (0.35 * shape[0]) ** 2)[..., None]
    return (disk * (100 + 20 * rng.random(shape)) + 3 * rng.random(shape)).astype(np.float32)


def _lowres(truth, task):
    x = torch.from_numpy(truth).permute(2, 0, 1)[:, None]
    return task.forward(x, OperatorParams())[:, 0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def model():
    return medrecon.load_model(device="cpu")


@pytest.fixture(scope="module")
def low():
    return _lowres(_truth((32, 32, 3)), medrecon.get_task("sr4x"))  # (8, 8, 3)


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ------------------------------------------------------------------------------------------------ imports
def test_import_medrecon_is_light_and_the_api_lazy():
    out = _python(
        "import sys, medrecon, medrecon.api\n"
        "print('torch' in sys.modules, 'matplotlib' in sys.modules, 'hydra' in sys.modules)\n"
        "print(medrecon.load_model is medrecon.api.load_model, callable(medrecon.reconstruct))\n"
    )
    assert out.split() == ["False", "False", "False", "True", "True"]


def test_notebook_backend_is_unchanged_by_imports_and_figures(tmp_path):
    """As in a notebook: a backend is chosen first; importing everything and writing figure panels (an
    evaluation with out=) keeps it, and leaves no pyplot figure behind."""
    out = _python(
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import matplotlib.pyplot as plt\n"
        "before = matplotlib.get_backend()\n"
        "import numpy as np\n"
        "import medrecon, medrecon.api, medrecon.evaluate.run, medrecon.recon.run, medrecon.evaluate.figures\n"
        "imported = matplotlib.get_backend()\n"
        "truth = np.random.default_rng(0).random((16, 16, 3)).astype('float32') + 1\n"
        f"report = medrecon.api.evaluate(['bicubic'], truth, task='sr2x', out={str(tmp_path)!r}, figures=1)\n"
        "print(before, imported, matplotlib.get_backend(), len(plt.get_fignums()), len(report.figures))\n"
    )
    assert out.split() == ["svg", "svg", "svg", "0", "1"]
    assert len(list((tmp_path / "figures").glob("*.png"))) == 1


def test_commands_share_one_setup_module():
    """evaluate imports no helper from the reconstruct command; both use medrecon.recon.setup."""

    def imports(path):
        tree = ast.parse((ROOT / path).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    for path in ("medrecon/evaluate/run.py", "medrecon/evaluate/selection.py", "medrecon/api.py"):
        assert "medrecon.recon.run" not in imports(path), path
        assert "medrecon.cli" not in imports(path), path
    for path in ("medrecon/evaluate/run.py", "medrecon/recon/run.py", "medrecon/api.py"):
        assert "medrecon.recon.setup" in imports(path), path


# ------------------------------------------------------------------------------------------------ models
def test_load_model_demo_record(model):
    assert model.task.name == "sr4x" and model.objective == "diffusion"
    assert model.spatial_dims == 2 and model.axis == 2 and model.weights == "ema"
    assert model.device.type == "cpu" and model.path == demo_checkpoint("sr4x")
    low, high = model.spacing
    assert 0 < low < high
    assert "sr4x" in repr(model)


def test_load_model_errors(tmp_path):
    with pytest.raises(UsageError, match="no demo model for task='denoise'"):
        medrecon.load_model(task="denoise")
    with pytest.raises(UsageError, match="missing.safetensors"):
        medrecon.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(UsageError, match="is a sr4x model, not mri_r4"):
        medrecon.load_model(demo_checkpoint("sr4x"), task="mri_r4", device="cpu")


# ------------------------------------------------------------------------------------------------ reconstruct
def test_reconstruct_a_file_equals_the_command(model, low, tmp_path):
    """The same file, seed and options give the same voxels and grid as `medrecon reconstruct`."""
    path = tmp_path / "low.nii.gz"
    write_nifti(Volume(low, np.diag([4.0, 4.0, 3.0, 1.0]), {}), path)
    args = [f"input={path}", f"out={tmp_path / 'out'}", f"checkpoint={demo_checkpoint('sr4x')}"]
    args += ["sampler.steps=2", "device=cpu", "seed=3", "progress=false"]
    assert run_command("reconstruct", args) == 0
    record = json.loads((tmp_path / "out" / "run.jsonl").read_text().splitlines()[0])
    written = read_nifti(tmp_path / "out" / record["outputs"][0])

    result = medrecon.reconstruct(model, path, steps=2, seed=3)
    assert result.array.shape == (32, 32, 3) and result.method == "diffusion" and result.task == "sr4x"
    np.testing.assert_allclose(result.array, written.array, rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.affine, written.affine, atol=1e-6)
    np.testing.assert_allclose(np.diag(result.affine)[:3], [1.0, 1.0, 3.0])


def test_seeds_are_per_slice_not_per_batch(model, low):
    kwargs = {"sampler": "dpmpp", "steps": 2}
    one = medrecon.reconstruct(model, low, batch_size=1, **kwargs).array
    three = medrecon.reconstruct(model, low, batch_size=3, **kwargs).array
    np.testing.assert_allclose(one, three, rtol=0, atol=1e-4)
    other = medrecon.reconstruct(model, low, seed=1, **kwargs).array
    assert np.abs(other - one).max() > 1e-3  # the seed does change the noise


def test_arrays_tensors_and_2d_images(model, low):
    """A tensor gives what the array gives; a 2D image is a one-slice volume (the encoder is fitted on what
    is given, so it is not the first slice of a longer volume)."""
    volume = medrecon.reconstruct(model, low, steps=2)
    tensor = medrecon.reconstruct(model, torch.from_numpy(low), steps=2)
    image = medrecon.reconstruct(model, low[..., 0], steps=2)
    single = medrecon.reconstruct(model, low[..., :1], steps=2)
    np.testing.assert_array_equal(volume.array, tensor.array)
    assert image.array.shape == (32, 32) and image.volume.shape == (32, 32, 1)
    np.testing.assert_array_equal(image.array, single.array[..., 0])
    assert volume.std is None


def test_posterior_samples_give_a_std(model, low):
    result = medrecon.reconstruct(model, low, sampler="dpmpp", steps=2, samples=2)
    assert result.std.shape == result.array.shape and float(result.std.max()) > 0


def test_baseline_on_an_array_keeps_the_measurement(low):
    """`input` is the measurement on the output grid: its 4x4 block means give the array back."""
    result = medrecon.reconstruct("input", low, task="sr4x", encoder={"clip": False})
    assert result.method == "input" and result.array.shape == (32, 32, 3)
    again = _lowres(result.array, medrecon.get_task("sr4x"))
    np.testing.assert_allclose(again, low, rtol=1e-5, atol=1e-3)


def test_reconstruct_usage_errors(model, low):
    with pytest.raises(UsageError, match="needs task=TASK"):
        medrecon.reconstruct("tv", low)
    with pytest.raises(UsageError, match="method='wavelet' is not one of"):
        medrecon.reconstruct("wavelet", low, task="sr4x")
    with pytest.raises(UsageError, match="needs a model"):
        medrecon.reconstruct("diffusion", low, task="sr4x")
    with pytest.raises(UsageError, match="differs from the checkpoint's task"):
        medrecon.reconstruct(model, low, task="sr2x")
    with pytest.raises(UsageError, match="sampler='fast' is not one of"):
        medrecon.reconstruct(model, low, sampler="fast")
    with pytest.raises(UsageError, match="steps must be an integer >= 1"):
        medrecon.reconstruct(model, low, steps=0)
    with pytest.raises(UsageError, match="guidance='strong' is not one of"):
        medrecon.reconstruct(model, low, guidance="strong")
    with pytest.raises(UsageError, match="batch_size=0 must be an integer >= 1"):
        medrecon.reconstruct(model, low, batch_size=0)
    with pytest.raises(UsageError, match="precision='fp8' is not one of"):
        medrecon.reconstruct(model, low, precision="fp8")
    with pytest.raises(UsageError, match="2D image"):
        medrecon.reconstruct(model, low[None])
    bad = low.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(UsageError, match="non_finite_values"):
        medrecon.reconstruct(model, bad)


def test_tasks_and_baselines_directly():
    task = medrecon.get_task("sr4x")
    x = torch.rand(2, 1, 16, 16)
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    assert meas.y.shape == (2, 1, 4, 4)
    assert medrecon.baseline("bicubic")(task, meas).shape == (2, 1, 16, 16)
    assert medrecon.get_task("sr4x", spatial_dims=3).spatial_dims == 3
    with pytest.raises(UsageError, match="unknown task"):
        medrecon.get_task("sr3x")
    with pytest.raises(UsageError, match="unknown baseline"):
        medrecon.baseline("wavelet")


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_a_manifest_equals_the_command(tmp_path):
    """The report the API returns holds the numbers `medrecon evaluate` writes for the same manifest."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for n in range(2):
        write_nifti(
            Volume(_truth((24, 24, 4), n), np.diag([1.0, 1.0, 2.0, 1.0]), {}), archive / f"v{n}.nii.gz"
        )
    manifest = tmp_path / "manifest.jsonl"
    prep = [f"input={archive}", f"manifest={manifest}", "split.train=0.0", "split.val=0.0", "split.test=1.0"]
    assert run_command("prepare", prep) == 0
    args = [f"manifest={manifest}", f"out={tmp_path / 'cli'}", "task=sr2x", "methods=[bicubic,tv]"]
    assert run_command("evaluate", [*args, "progress=false", "device=cpu"]) == 0
    written = json.loads((tmp_path / "cli" / "report.json").read_text())

    report = evaluate(["bicubic", "tv"], manifest, task="sr2x", device="cpu")
    assert report.items == 2 and list(report.methods) == ["bicubic", "tv"]
    for name, scores in report.methods.items():
        for metric in ("psnr", "ssim", "nmse", "psnr_std", "ssim_fg"):
            assert getattr(scores, metric) == pytest.approx(written["methods"][name][metric], rel=1e-9)
    rows = read_metrics_csv(tmp_path / "cli" / "metrics.csv")
    assert sorted((r["id"], r["method"]) for r in rows) == sorted((r.id, r.method) for r in report.rows)
    assert report.config["selection"] == written["config"]["selection"]


def test_evaluate_arrays_report_as_data(tmp_path):
    truths = [_truth((24, 24, 4), 0), Volume(_truth((24, 24, 4), 1), np.diag([1.0, 1.0, 2.0, 1.0]), {})]
    report = evaluate(["input", "bicubic"], truths, task="sr2x", out=tmp_path / "eval", figures=1)
    assert report.items == 2 and len(report.rows) == 4 and not report.failed
    bicubic = report.methods["bicubic"]
    values = [r.metrics.psnr for r in report.rows if r.method == "bicubic"]
    assert bicubic.psnr == pytest.approx(np.mean(values)) and bicubic.volumes == 2
    assert bicubic.psnr_std == pytest.approx(np.std(values, ddof=1))
    assert bicubic.psnr > report.methods["input"].psnr  # interpolation beats replication on a smooth disk
    data = report.as_dict()
    assert data["methods"]["bicubic"]["psnr"] == pytest.approx(bicubic.psnr)
    assert data["config"]["methods"] == ["input", "bicubic"] and data["items"] == 2
    assert {row["id"] for row in report.table()} == {"volume0", "volume1"}
    assert "| sr2x | bicubic | 2 |" in report.markdown()
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["methods"]["bicubic"]["psnr"] == pytest.approx(bicubic.psnr)
    assert len(report.figures) == 1 and (tmp_path / "eval" / report.figures[0]).is_file()


def test_evaluate_with_the_demo_model_on_a_few_slices(model):
    truth = _truth((32, 32, 6), 2)
    report = evaluate(["bicubic", "diffusion"], truth, model=model, steps=2, slices=[2, 4])
    assert [r.slices for r in report.rows] == [2, 2]
    assert report.config["sampler"]["steps"] == 2 and report.config["checkpoint"] == "demo_sr4x.safetensors"
    assert report.config["spacing"]["training_mm"] is None  # a bare array has no spacing to check
    assert np.isfinite(report.methods["diffusion"].psnr)


def test_evaluate_usage_errors(model):
    truth = _truth((16, 16, 2))
    with pytest.raises(UsageError, match="needs checkpoint"):
        evaluate(["diffusion"], truth, task="sr2x")
    with pytest.raises(UsageError, match="unknown"):
        evaluate(["wavelet"], truth, task="sr2x")
    with pytest.raises(UsageError, match="needs task=TASK"):
        evaluate(["tv"], truth)
    with pytest.raises(UsageError, match="seed=-1 must be an integer >= 0"):
        evaluate(["tv"], truth, task="sr2x", seed=-1)
    with pytest.raises(UsageError, match="differs from the checkpoint's task"):
        evaluate(["tv"], truth, model=model, task="sr2x")


def test_evaluate_shows_a_progress_bar(tmp_path, capsys):
    """API and command: a tqdm bar over slices of every method, with volumes done (progress=true)."""
    evaluate(["input", "bicubic"], [_truth((16, 16, 3)), _truth((16, 16, 3), 1)], task="sr2x", progress=True)
    err = capsys.readouterr().err
    assert "evaluate" in err and "12/12" in err and "items 2/2" in err  # 2 volumes x 3 slices x 2 methods
    evaluate(["input"], _truth((16, 16, 3)), task="sr2x", progress=False)
    assert "evaluate" not in capsys.readouterr().err

    archive = tmp_path / "archive"
    archive.mkdir()
    write_nifti(Volume(_truth((16, 16, 3)), np.eye(4), {}), archive / "v.nii.gz")
    manifest = tmp_path / "m.jsonl"
    prep = [f"input={archive}", f"manifest={manifest}", "split.train=0.0", "split.val=0.0", "split.test=1.0"]
    assert run_command("prepare", prep) == 0
    capsys.readouterr()
    common = [f"manifest={manifest}", "task=sr2x", "methods=[input]", "device=cpu"]
    assert run_command("evaluate", [*common, f"out={tmp_path / 'a'}", "progress=true"]) == 0
    assert "items 1/1" in capsys.readouterr().err
    assert run_command("evaluate", [*common, f"out={tmp_path / 'b'}", "progress=false"]) == 0
    assert "items 1/1" not in capsys.readouterr().err


def test_reconstruct_kspace_with_the_mri_demo_model_equals_the_command(tmp_path):
    """A fastMRI k-space file through the API: the command's reader, measurement and seeds."""
    from test_kspace_h5 import _write

    image = _truth((32, 32, 2)).transpose(2, 0, 1)  # (slices, H, W)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1))), axes=(-2, -1))
    mask = np.zeros(32, dtype=bool)
    mask[::4] = True
    mask[14:18] = True
    path = _write(tmp_path / "file.h5", (kspace * mask).astype(np.complex64), mask=mask)
    args = [f"input={path}", f"out={tmp_path / 'out'}", f"checkpoint={demo_checkpoint('mri_r4')}"]
    assert run_command("reconstruct", [*args, "sampler.steps=1", "device=cpu", "progress=false"]) == 0
    record = json.loads((tmp_path / "out" / "run.jsonl").read_text().splitlines()[0])
    written = read_nifti(tmp_path / "out" / record["outputs"][0])

    mri = medrecon.load_model(task="mri_r4", device="cpu")
    result = medrecon.reconstruct(mri, path, steps=1)
    assert result.task == "mri_r4" and result.array.shape == written.shape
    np.testing.assert_allclose(result.array, written.array, rtol=0, atol=1e-4)
    with pytest.raises(UsageError, match="unsupported"):  # an image is not a measurement of k-space
        medrecon.reconstruct(mri, image.transpose(1, 2, 0), steps=1)
