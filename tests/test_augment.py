"""Training augmentations (``data.augment``): in-plane rescaling, gamma and bias field -- what they do, that
every draw is a function of the sample's key, that they are off by default (bit-identical samples), and the
training spacing range they record in the checkpoint card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medrecon.card import plane_axes, training_plane_spacing, widen_by_scale
from medrecon.checkpoint import load_checkpoint
from medrecon.cli import main
from medrecon.data.augment import Augment, apply_bias_field, gamma_transform
from medrecon.data.build import build_training_data
from medrecon.data.transforms import crop_or_pad, random_flip_rot90, resize_plane
from medrecon.io.nifti import write_nifti
from medrecon.manifest import ManifestRecord, write_manifest
from medrecon.volume import Volume

SHAPE = (48, 48, 6)
PERIOD = 8  # voxels per stripe period along axis 0 of the stripes volume


def stripes(shape=SHAPE) -> np.ndarray:
    """Stripes along axis 0 (period :data:`PERIOD`) inside a body: a pattern whose apparent period shows the
    zoom."""
    i = np.arange(shape[0])[:, None, None]
    vol = 100.0 + 50.0 * np.sin(2 * np.pi * i / PERIOD) * np.ones(shape)
    return vol.astype(np.float32)


def phantom(seed: int, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.where((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1, 100.0, 0.0) * (1 + 0.2 * k)
    return np.clip(vol + rng.normal(0, 1, shape), 0, None).astype(np.float32)


def write_archive(root: Path, volumes: dict[str, np.ndarray], spacing=(1.0, 1.0, 2.0)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for n, (split, vol) in enumerate(volumes.items()):
        path = root / f"{split}.nii.gz"
        write_nifti(Volume(vol, np.diag([*spacing, 1.0])), path)
        records.append(ManifestRecord(f"s-{n:016x}", "nifti", [path], "MR", vol.shape, spacing, split, "ok"))
    return write_manifest(root / "manifest.jsonl", records)


def data_cfg(**overrides):
    base = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "slices2d.yaml")
    base.patch_size = 16
    base.foreground = None
    return OmegaConf.merge(base, OmegaConf.create(overrides))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return write_archive(tmp_path_factory.mktemp("aug"), {"train": phantom(0), "val": phantom(1)})


def period(image: np.ndarray, axis: int = 0) -> float:
    """The dominant period (voxels) of a 2D image along ``axis``, from the mean spectrum's peak."""
    profile = np.moveaxis(image, axis, 0).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(profile - profile.mean()))
    return len(profile) / int(np.argmax(spectrum))


# ---- defaults off ----------------------------------------------------------------------------------------------
def test_defaults_off_give_the_same_samples_as_flips_and_crop_alone(archive):
    """The shipped config (scale, gamma, bias_field null) draws exactly what flips + rotations + crop drew."""
    cfg = data_cfg()
    assert cfg.augment.scale is None and cfg.augment.gamma is None and cfg.augment.bias_field is None
    data = build_training_data(cfg, archive)
    ds = data.train
    assert ds.augment == Augment(flip=True, rot90=True)
    for i, seed in [(0, 11), (3, 12345), (5, 2**40)]:
        ref = ds.refs[i]
        region = ds.regions[ref.region]
        view = region.view(ds.cache.get(region.volume))
        stack = np.moveaxis(np.take(view, [ref.index], axis=ref.axis), ref.axis, 0)
        rng = np.random.default_rng(seed)
        expected = crop_or_pad(random_flip_rot90(stack, rng, True, True), ds.patch, rng)
        assert torch.equal(ds[(i, seed)], torch.from_numpy(np.ascontiguousarray(expected, np.float32)))
    assert data.summary.plane_spacing == (1.0, 1.0)  # the volumes' own in-plane spacing


def test_3d_patches_with_defaults_off_are_unchanged(archive):
    data = build_training_data(data_cfg(spatial_dims=3, patch_size=16), archive)
    ds = data.train
    for seed in (1, 99):
        view = ds.regions[0].view(ds.cache.get(ds.regions[0].volume))
        rng = np.random.default_rng(seed)
        patch = random_flip_rot90(view[ds._position(view, rng)][None], rng, True, True)
        expected = crop_or_pad(patch, ds.patch, None)
        assert torch.equal(ds[(0, seed)], torch.from_numpy(np.ascontiguousarray(expected, np.float32)))


# ---- determinism -----------------------------------------------------------------------------------------------
ON = {"scale": [0.6, 1.5], "gamma": [0.7, 1.5], "bias_field": 0.3, "p": 1.0}


@pytest.mark.parametrize("extra", [{}, {"spatial_dims": 3, "patch_size": 16}, {"context": 1}])
def test_augmented_samples_are_a_pure_function_of_the_key(archive, extra):
    first = build_training_data(data_cfg(augment=ON, **extra), archive).train
    again = build_training_data(data_cfg(augment=ON, **extra), archive).train  # a fresh process's dataset
    plain = build_training_data(data_cfg(**extra), archive).train
    for key in [(0, 5), (len(first) - 1, 77), (0, 6)]:
        sample = first[key]
        assert sample.shape == plain[key].shape and torch.isfinite(sample).all()
        assert torch.equal(sample, first[key]) and torch.equal(sample, again[key])
        assert not torch.equal(sample, plain[key])  # p=1: every sample is transformed
    assert not torch.equal(first[(0, 5)], first[(0, 6)])
    assert torch.equal(first[0], plain[0])  # evaluation samples (int keys) are never augmented


def test_training_with_augmentation_resumes_exactly(archive, tmp_path):
    common = [
        "task=sr4x", "model=unet_tiny", "device=cpu", "data.patch_size=16", "train.batch_size=2",
        "train.warmup=1", "progress=false", "train.steps=4", "train.ckpt_every=2", "train.val_every=0",
        "train.lr=1e-3", "data.augment.scale=[0.6,1.5]", "data.augment.gamma=[0.7,1.5]",
        "data.augment.bias_field=0.3", "data.augment.p=0.8",
    ]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", f"manifest={archive}", f"out={straight}", *common]) == 0
    assert main(["train", f"manifest={archive}", f"out={split}", *common, "train.stop_at=2"]) == 0
    assert main(["train", f"manifest={archive}", f"out={split}", *common]) == 0  # resume=auto continues
    a, b = load_file(straight / "last.safetensors"), load_file(split / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded = load_checkpoint(straight / "last.safetensors")
    # 1 mm volumes zoomed by 0.6..1.5 (p < 1: the native 1 mm too): seen at 1/1.5 .. 1/0.6 mm
    assert loaded.card.data.plane_spacing == pytest.approx((1 / 1.5, 1 / 0.6), abs=1e-6)
    assert training_plane_spacing(loaded.card, loaded.config, 2) == loaded.card.data.plane_spacing


# ---- what the transforms do --------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [0.5, 0.8, 1.5, 2.0])
def test_scale_changes_the_apparent_resolution(tmp_path, factor):
    """Stripes of period 8 voxels zoomed by ``s`` have period ``8 s`` in the sample: the ground truth looks as
    if it had voxels ``s`` times smaller (``s > 1``) or larger."""
    manifest = write_archive(tmp_path, {"train": stripes((160, 160, 4))})
    cfg = data_cfg(
        patch_size=64, val_split=None, augment={"scale": [factor, factor], "p": 1.0, "rot90": False}
    )
    ds = build_training_data(cfg, manifest).train
    plain = build_training_data(
        data_cfg(patch_size=64, val_split=None, augment={"rot90": False}), manifest
    ).train
    for seed in (3, 4):
        zoomed, native = ds[(0, seed)][0].numpy(), plain[(0, seed)][0].numpy()
        assert zoomed.shape == native.shape == (64, 64)
        assert period(native) == pytest.approx(PERIOD, rel=0.02)
        assert period(zoomed) == pytest.approx(PERIOD * factor, rel=0.1)


def test_zoom_window_and_resize_plane():
    assert Augment.window((64, 64), 1.5) == (43, 43) and Augment.window((16, 16, 8), 0.5) == (32, 32, 8)
    x = np.random.default_rng(0).random((2, 10, 7)).astype(np.float32)
    assert resize_plane(x, (10, 7)) is x or np.array_equal(resize_plane(x, (10, 7)), x)
    down, up = resize_plane(x, (5, 7)), resize_plane(x, (20, 14))
    assert down.shape == (2, 5, 7) and up.shape == (2, 20, 14)
    np.testing.assert_allclose(down, x.reshape(2, 5, 2, 7).mean(2), atol=1e-6)  # area: block means
    assert up.min() >= x.min() - 1e-6 and up.max() <= x.max() + 1e-6  # no overshoot
    assert resize_plane(np.ones((1, 8, 8, 3), np.float32), (4, 12)).shape == (1, 4, 12, 3)  # slice axis kept


def test_gamma_is_monotonic_and_keeps_the_encoded_range():
    x = np.linspace(-1.5, 1.5, 301, dtype=np.float32)
    for g in (0.5, 0.7, 1.5, 3.0):
        y = gamma_transform(x, g)
        assert np.all(np.diff(y) > 0)  # strictly increasing, outside [-1, 1] too
        assert gamma_transform(np.array([-1.0, 1.0], np.float32), g).tolist() == [-1.0, 1.0]
        inside = y[(x >= -1) & (x <= 1)]
        assert inside.min() >= -1 and inside.max() <= 1
    assert gamma_transform(np.array([0.0], np.float32), 2.0)[0] == pytest.approx(-0.5)  # (0.5 ** 2) * 2 - 1
    sample = np.random.default_rng(1).uniform(-1, 1, (1, 16, 16)).astype(np.float32)
    out = Augment(gamma=(0.5, 2.0), p=1.0).intensity(sample, np.random.default_rng(2))
    assert not np.array_equal(out, sample)
    assert np.array_equal(np.argsort(out, axis=None), np.argsort(sample, axis=None))  # order kept


def test_bias_field_is_smooth_positive_and_seeded():
    flat = np.zeros((2, 32, 24), np.float32)  # t = 0.5 everywhere
    out = apply_bias_field(flat, 0.3, seed=7)
    field = (out + 1.0) / 2.0 / 0.5
    assert np.all(field > 0) and field.std() > 0.01  # positive, not constant
    assert np.array_equal(field[0], field[1])  # one field for all channels
    # smooth: the log field is a polynomial of degree <= 3 along each axis (a least-squares fit leaves nothing)
    u, v = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 24), indexing="ij")
    basis = np.stack([u**a * v**b for a in range(4) for b in range(4)], -1).reshape(-1, 16)
    log_field = np.log(field[0]).ravel()
    coef, *_ = np.linalg.lstsq(basis, log_field, rcond=None)
    assert np.abs(basis @ coef - log_field).max() < 1e-4
    assert np.array_equal(apply_bias_field(flat, 0.3, seed=7), out)
    assert not np.array_equal(apply_bias_field(flat, 0.3, seed=8), out)
    assert np.all(apply_bias_field(np.full((1, 8, 8), -1.0, np.float32), 0.3, seed=7) == -1.0)  # background


def test_intensity_output_stays_in_the_encoded_range():
    rng = np.random.default_rng(0)
    aug = Augment(gamma=(0.5, 2.0), bias_field=1.0, p=1.0)
    for seed in range(5):
        x = rng.uniform(-1, 1, (1, 16, 16)).astype(np.float32)
        out = aug.intensity(x, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1


def test_options_are_validated(archive, tmp_path, capfd):
    for bad in ({"scale": [1.5, 0.6]}, {"scale": [0, 1]}, {"gamma": "x"}, {"bias_field": 2}, {"p": 1.5}):
        with pytest.raises(ValueError, match="data.augment"):
            Augment(**bad)
    assert Augment(bias_field=0).bias_field is None and Augment(scale=[1, 2]).scale == (1.0, 2.0)
    args = [f"manifest={archive}", f"out={tmp_path / 'run'}", "task=sr4x", "model=unet_tiny", "device=cpu"]
    assert main(["train", *args, "data.patch_size=16", "data.augment.gamma=[2,1]"]) == 2
    assert "data.augment.gamma=[2.0, 1.0] must satisfy" in capfd.readouterr().out  # the one-line error


# ---- the spacing range the card records ----------------------------------------------------------------------------
def test_plane_axes_and_the_scale_widened_range(archive):
    assert plane_axes(2, 2) == (0, 1) and plane_axes(2, 0) == (1, 2) and plane_axes(2, "all") == (0, 1, 2)
    assert plane_axes(3, 2) == (0, 1)
    assert widen_by_scale((1.0, 2.0), None) == (1.0, 2.0)
    assert widen_by_scale((1.0, 2.0), (1.25, 2.0), 1.0) == (0.5, 1.6)
    assert widen_by_scale((1.0, 2.0), (1.25, 2.0), 0.5) == (0.5, 2.0)  # unzoomed samples too
    summary = build_training_data(data_cfg(axis="all"), archive).summary
    assert summary.plane_spacing == (1.0, 2.0)  # slices across axis 0/1 have the 2 mm slice axis in plane
    summary = build_training_data(data_cfg(augment={"scale": [0.5, 2.0], "p": 1.0}), archive).summary
    assert summary.plane_spacing == (0.5, 2.0)
