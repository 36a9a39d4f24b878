"""fastMRI interop: reconstruct writes fastMRI-format files, evaluate scores k-space files by the fastMRI protocol.

Synthetic fastMRI files (``kspace``, ``mask``, ``reconstruction_esc`` / ``reconstruction_rss``, the ISMRMRD
header of tests/test_kspace_h5.py: a 16 x 12 k-space grid, an 8 x 8 reconstruction grid) go through
``medrecon reconstruct``; the ``reconstruction`` it writes is checked against the zero-filled image computed
here with numpy and scored with the protocol against hand-computed PSNR/NMSE; ``medrecon evaluate`` on a
manifest of such files gives the same numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from skimage.metrics import structural_similarity
from test_kspace_h5 import HEADER

from medrecon.checkpoint import ModelSpec, save_checkpoint
from medrecon.cli import run_command
from medrecon.data.encoder import Encoder
from medrecon.evaluate.fastmri_protocol import score_volume
from medrecon.evaluate.report import read_metrics_csv
from medrecon.io.fastmri_out import (
    center_crop,
    read_fastmri_reconstruction,
    recon_crop,
    write_fastmri_reconstruction,
)
from medrecon.io.kspace_h5 import KSpaceInfo, inspect_kspace_h5
from medrecon.io.nifti import read_nifti
from medrecon.manifest import read_manifest
from medrecon.physics.registry import task_config
from medrecon.recon.ledger import read_records

SLICES, H, W = 2, 16, 12
MASK_COLUMNS = [1, 4, 5, 6, 7, 10]  # the centre W // 2 = 6 and its neighbours, plus two outer lines


def _fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _ifft2c(k: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def _image(seed: int) -> np.ndarray:
    """A real, non-negative (slices, H, W) object inside the field of view."""
    rng = np.random.default_rng(seed)
    image = np.zeros((SLICES, H, W), np.float64)
    image[:, 3:13, 2:10] = 1.0 + rng.random((SLICES, 10, 8))
    return image


def _coil_maps(coils: int) -> np.ndarray:
    rows = np.linspace(-1, 1, H)[:, None]
    cols = np.linspace(-1, 1, W)[None, :]
    maps = [np.exp(-((rows - np.sin(a)) ** 2 + (cols - np.cos(a)) ** 2)) * np.exp(1j * a) for a in
            2 * np.pi * np.arange(coils) / coils]  # fmt: skip
    return np.stack(maps)


def write_fastmri(path: Path, image: np.ndarray, *, coils: int = 0, masked: bool = True) -> Path:
    """A fastMRI-layout file of ``image``: single-coil (``reconstruction_esc``) or ``coils`` coils
    (``reconstruction_rss``); ``masked``: k-space kept on ``MASK_COLUMNS`` only, with a ``mask`` dataset (a
    challenge-style file); else fully sampled without a mask (a val-style file)."""
    if coils:
        coil_images = _coil_maps(coils)[None] * image[:, None]  # (slices, coils, H, W)
        kspace = _fft2c(coil_images)
        full = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1))
        key = "reconstruction_rss"
    else:
        kspace = _fft2c(image)
        full = np.abs(image)
        key = "reconstruction_esc"
    mask = np.zeros(W, np.float32)
    mask[MASK_COLUMNS] = 1
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=(kspace * mask if masked else kspace).astype(np.complex64))
        if masked:
            f.create_dataset("mask", data=mask.astype(bool))
        f.create_dataset(key, data=center_crop(full, (8, 8)).astype(np.float32))
        f.create_dataset("ismrmrd_header", data=HEADER.encode())
        f.attrs["acquisition"] = "CORPD_FBK"
    return path


def reconstruct(*overrides) -> int:
    return run_command("reconstruct", ["progress=false", *[str(o) for o in overrides]])


def evaluate(*overrides) -> int:
    return run_command("evaluate", [str(o) for o in overrides])


def records(out: Path) -> dict:
    return {Path(r.input[0]).name: r for r in read_records(out / "run.jsonl")}


def hand_scores(target: np.ndarray, recon: np.ndarray) -> tuple[float, float, float]:
    """PSNR and NMSE written out, SSIM as fastMRI's evaluate.py calls scikit-image (8 x 8 targets: no crop)."""
    t, r = target.astype(np.float64), recon.astype(np.float64)
    psnr = 10 * math.log10(t.max() ** 2 / np.mean((t - r) ** 2))
    nmse = float(np.sum((t - r) ** 2) / np.sum(t**2))
    ssim = float(np.mean([structural_similarity(target[s], recon[s], data_range=target.max())
                          for s in range(target.shape[0])]))  # fmt: skip
    return psnr, ssim, nmse


def mri_checkpoint(path: Path) -> Path:
    """An untrained tiny 2D model of task mri_r4 (condition: real and imaginary zero-filled image)."""
    spec = ModelSpec(
        model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
               "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
        task=task_config("mri_r4"), spatial_dims=2, image_channels=1, cond_channels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_checkpoint(path, raw=spec.build_precond(), ema=None, spec=spec, encoder=Encoder(),
                           config=OmegaConf.create({"data": {"axis": 2}}), step=1)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the writer
def test_recon_crop_follows_fastmri_rules(tmp_path):
    path = write_fastmri(tmp_path / "sc.h5", _image(0))
    info = inspect_kspace_h5(path)
    assert info.recon_matrix == (8, 8, 1)  # reconSpace of the header
    assert recon_crop(info) == (8, 8)  # the target's size
    base = {"kspace_shape": (2, 16, 12), "multicoil": False, "has_mask": False}
    no_target = KSpaceInfo(target_key=None, target_shape=None, recon_matrix=(10, 6, 1), **base)
    assert recon_crop(no_target) == (10, 6)  # fastMRI's recon_size without a target
    assert recon_crop(KSpaceInfo(target_key=None, target_shape=None, **base)) == (16, 12)  # nothing: no crop
    wide = KSpaceInfo(target_key="reconstruction_rss", target_shape=(2, 8, 14), **base)
    assert recon_crop(wide) == (12, 12)  # k-space narrower than the target: square of its width (FLAIR 203)


def test_center_crop_offsets_like_fastmri():
    data = np.arange(5 * 6).reshape(5, 6)
    np.testing.assert_array_equal(center_crop(data, (3, 3)), data[1:4, 1:4])  # (5-3)//2, (6-3)//2
    np.testing.assert_array_equal(center_crop(data, (2, 5)), data[1:3, 0:5])
    with pytest.raises(ValueError):
        center_crop(data, (6, 3))


def test_writer_is_atomic(tmp_path, monkeypatch):
    recon = np.random.default_rng(1).random((2, 8, 8))
    dest = write_fastmri_reconstruction(tmp_path / "fastmri" / "file1.h5", recon)
    back = read_fastmri_reconstruction(dest)
    assert back.dtype == np.float32 and back.shape == (2, 8, 8)
    np.testing.assert_array_equal(back, recon.astype(np.float32))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(OSError):
        write_fastmri_reconstruction(dest, np.zeros((1, 8, 8)))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_fastmri_reconstruction(dest), recon.astype(np.float32))  # untouched
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file1.h5"]  # no temporary file left


# ------------------------------------------------------------------------------------------------ reconstruct
@pytest.fixture(scope="module")
def singlecoil(tmp_path_factory):
    """A challenge-style single-coil file reconstructed zero-filled: (input file, image, out folder)."""
    root = tmp_path_factory.mktemp("fastmri_sc")
    image = _image(0)
    path = write_fastmri(root / "file1000001.h5", image)
    out = root / "out"
    assert reconstruct(f"input={path}", f"out={out}", "method=zero_filled", "task=mri_r4") == 0
    return path, image, out


def test_reconstruct_writes_a_fastmri_reconstruction(singlecoil):
    path, image, out = singlecoil
    (rec,) = records(out).values()
    assert rec.status == "ok" and "fastmri/file1000001.h5" in rec.outputs
    written = read_fastmri_reconstruction(out / "fastmri" / "file1000001.h5")
    assert written.dtype == np.float32 and written.shape == (SLICES, 8, 8)
    mask = np.zeros(W)
    mask[MASK_COLUMNS] = 1
    zero_filled = _ifft2c(_fft2c(image) * mask).real  # (slices, H, W): what zero_filled returns
    np.testing.assert_allclose(written, zero_filled[:, 4:12, 2:10], atol=1e-5)  # (16-8)//2, (12-8)//2
    nifti = read_nifti(out / rec.outputs[0]).array  # (W, H, slices): the uncropped grid
    np.testing.assert_array_equal(written, center_crop(nifti.transpose(2, 1, 0), (8, 8)))


def test_the_protocol_scores_the_written_file_as_computed_by_hand(singlecoil):
    path, image, out = singlecoil
    with h5py.File(path, "r") as f:
        target = f["reconstruction_esc"][()]
    written = read_fastmri_reconstruction(out / "fastmri" / path.name)
    scores = score_volume(target, written)
    psnr, ssim, nmse = hand_scores(target, written)
    assert scores.psnr == pytest.approx(psnr, rel=1e-6)
    assert scores.nmse == pytest.approx(nmse, rel=1e-6)
    assert scores.ssim == pytest.approx(ssim, rel=1e-9)
    assert 5 < scores.psnr < 60 and 0 < scores.nmse < 1  # undersampled: imperfect, not garbage


def test_resume_and_the_option(singlecoil, tmp_path):
    path, _, out = singlecoil
    before = (out / "fastmri" / path.name).stat().st_mtime_ns
    assert reconstruct(f"input={path}", f"out={out}", "method=zero_filled", "task=mri_r4") == 0
    assert next(iter(records(out).values())).status == "skipped"
    assert (out / "fastmri" / path.name).stat().st_mtime_ns == before
    # without the option: no fastMRI file; switching it on redoes the item instead of skipping it
    other = tmp_path / "out"
    args = [f"input={path}", f"out={other}", "method=zero_filled", "task=mri_r4"]
    assert reconstruct(*args, "fastmri_output=false") == 0
    assert not (other / "fastmri").exists()
    assert reconstruct(*args) == 0
    (rec,) = records(other).values()
    assert rec.status == "ok" and (other / "fastmri" / path.name).is_file()
    assert reconstruct(*args, "fastmri_output=maybe") == 2


def test_inputs_sharing_a_file_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        write_fastmri(tmp_path / "in" / folder / "file1.h5", _image(1))
    args = [f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}", "method=zero_filled", "task=mri_r4"]
    assert reconstruct(*args) == 2
    assert reconstruct(*args, "fastmri_output=false") == 0


def test_multicoil_with_a_tiny_model(tmp_path):
    path = write_fastmri(tmp_path / "file_mc.h5", _image(2), coils=3)
    ckpt = mri_checkpoint(tmp_path / "mri.safetensors")
    out = tmp_path / "out"
    assert reconstruct(f"input={path}", f"out={out}", f"checkpoint={ckpt}", "sampler.steps=2") == 0
    (rec,) = records(out).values()
    written = read_fastmri_reconstruction(out / "fastmri" / path.name)
    assert written.dtype == np.float32 and written.shape == (SLICES, 8, 8) and np.isfinite(written).all()
    nifti = read_nifti(out / rec.outputs[0]).array
    np.testing.assert_array_equal(written, center_crop(nifti.transpose(2, 1, 0), (8, 8)))


# ------------------------------------------------------------------------------------------------ evaluate
def _manifest(root: Path) -> Path:
    manifest = root / "manifest.jsonl"
    args = [f"input={root}", f"manifest={manifest}", "split.train=0.0", "split.val=0.0", "split.test=1.0"]
    assert run_command("prepare", args) == 0
    return manifest


def test_evaluate_scores_kspace_files_by_the_fastmri_protocol(singlecoil, tmp_path):
    path, _, recon_out = singlecoil
    root = tmp_path / "archive"
    root.mkdir()
    sc = write_fastmri(root / path.name, _image(0))  # the same file as the reconstruct fixture's
    write_fastmri(root / "file_mc.h5", _image(3), coils=3, masked=False)  # fully sampled: the task's mask
    out, manifest = tmp_path / "eval", _manifest(root)
    ids = {Path(r.paths[0]).name: r.id for r in read_manifest(manifest)}
    assert evaluate(f"manifest={manifest}", f"out={out}", "task=mri_r4", "methods=[zero_filled,input]") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "fastmri" and report["items"] == 2
    assert set(report["methods"]) == {"zero_filled", "input"}
    assert report["methods"]["zero_filled"]["psnr_fg"] is None  # no foreground metrics in this protocol
    masks = {entry["mask"]: entry for entry in report["config"]["kspace"]}
    assert masks["file"]["acceleration"] == pytest.approx(W / len(MASK_COLUMNS), abs=1e-3)
    assert masks["task"]["acceleration"] == pytest.approx(4.0)  # round(12 / 4) = 3 lines of 12
    md = (out / "report.md").read_text()
    assert "protocol: fastmri" in md and "| mri_r4 [fastmri] | zero_filled | 2 |" in md
    # the single-coil file's zero-filled score is the score of reconstruct's fastMRI output, by hand
    with h5py.File(sc, "r") as f:
        target = f["reconstruction_esc"][()]
    written = read_fastmri_reconstruction(recon_out / "fastmri" / path.name)
    psnr, ssim, nmse = hand_scores(target, written)
    rows = read_metrics_csv(out / "metrics.csv")
    row = next(r for r in rows if r["method"] == "zero_filled" and r["id"] == ids[path.name])
    assert row["psnr"] == pytest.approx(psnr, rel=1e-5) and row["nmse"] == pytest.approx(nmse, rel=1e-4)
    assert row["ssim"] == pytest.approx(ssim, abs=1e-5) and math.isnan(row["psnr_fg"])


def test_evaluate_refuses_kspace_files_mixed_with_images(tmp_path):
    from medrecon.io.nifti import write_nifti
    from medrecon.volume import Volume

    root = tmp_path / "archive"
    root.mkdir()
    write_fastmri(root / "file1.h5", _image(4))
    write_nifti(Volume(_image(5).transpose(2, 1, 0).astype(np.float32), np.eye(4), {}), root / "img.nii.gz")
    assert evaluate(f"manifest={_manifest(root)}", f"out={tmp_path / 'eval'}", "task=mri_r4") == 2


def test_evaluate_scores_exactly_what_reconstruct_writes_with_a_model(tmp_path):
    """Same manifest ids, seeds, encoder and measured k-space: evaluate's diffusion score is the protocol's
    score of reconstruct's fastMRI-format file."""
    root = tmp_path / "archive"
    root.mkdir()
    path = write_fastmri(root / "file_mc.h5", _image(6), coils=3)
    manifest, ckpt = _manifest(root), mri_checkpoint(tmp_path / "mri.safetensors")
    common = [f"checkpoint={ckpt}", "sampler.steps=2", "seed=3"]
    assert reconstruct(f"input={manifest}", f"out={tmp_path / 'recon'}", *common) == 0
    out = tmp_path / "eval"
    assert evaluate(f"manifest={manifest}", f"out={out}", "methods=[diffusion]", *common) == 0
    with h5py.File(path, "r") as f:
        target = f["reconstruction_rss"][()]
    expected = score_volume(target, read_fastmri_reconstruction(tmp_path / "recon" / "fastmri" / path.name))
    (row,) = read_metrics_csv(out / "metrics.csv")
    assert row["method"] == "diffusion" and row["slices"] == SLICES
    assert row["psnr"] == pytest.approx(expected.psnr, rel=1e-5)
    assert row["ssim"] == pytest.approx(expected.ssim, rel=1e-5)
    assert row["nmse"] == pytest.approx(expected.nmse, rel=1e-4)


def test_a_failed_write_leaves_no_fastmri_file(singlecoil, tmp_path, monkeypatch):
    import medrecon.io.fastmri_out as fastmri_out

    path, _, _ = singlecoil
    out = tmp_path / "out"
    args = [f"input={path}", f"out={out}", "method=zero_filled", "task=mri_r4"]
    assert reconstruct(*args) == 0
    assert (out / "fastmri" / path.name).is_file()

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fastmri_out, "write_fastmri_reconstruction", fail)
    assert reconstruct(*args, "seed=1") == 3  # other settings: the item is redone, and its write fails
    (rec,) = records(out).values()
    assert rec.status == "failed" and rec.outputs == []
    assert not (out / "fastmri" / path.name).exists()  # the earlier run's file is stale: removed
    assert not list(out.glob("*.nii.gz"))
