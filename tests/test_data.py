"""Training data: encoder, splits, transforms, sampler, datasets built from a tiny NIfTI manifest."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medrecon.data.build import build_training_data
from medrecon.data.context import stack_neighbours, training_pair
from medrecon.data.datasets import Foreground, PatchDataset, SliceDataset, evaluation_subset, slice_index
from medrecon.data.encoder import Encoder, build_encoder
from medrecon.data.regions import Region, SliceSplit, split_regions
from medrecon.data.sampler import ResumableSampler
from medrecon.data.source import VolumeCache
from medrecon.data.transforms import crop_or_pad, patch_shape, random_flip_rot90
from medrecon.errors import UsageError
from medrecon.io.nifti import write_nifti
from medrecon.manifest import ManifestRecord, read_manifest, write_manifest
from medrecon.physics.sr import SuperResolutionTask
from medrecon.volume import Volume

SHAPE = (24, 24, 12)


def phantom(shape=SHAPE, seed=0, empty_slices=0):
    """An MR-like volume: nested ellipses (arbitrary units), background 0; the last ``empty_slices`` along K
    empty."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.where((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1, 100.0, 0.0)
    vol += np.where((i / 0.3) ** 2 + ((j - 0.2) / 0.25) ** 2 < 1, 100.0, 0.0)
    vol *= 1 + 0.2 * k
    vol += rng.normal(0, 1, shape)
    vol = np.clip(vol, 0, None).astype(np.float32)
    if empty_slices:
        vol[..., -empty_slices:] = 0
    return vol


def write_archive(root: Path, splits=("train", "val"), modality="MR", empty_slices=0, status="ok") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for n, split in enumerate(splits):
        path = root / f"vol{n}.nii.gz"
        write_nifti(Volume(phantom(seed=n, empty_slices=empty_slices), np.diag([1.0, 1.0, 2.0, 1.0])), path)
        records.append(
            ManifestRecord(
                id=f"s-{n:016x}",
                format="nifti",
                paths=[path],
                modality=modality,
                shape=SHAPE,
                spacing=(1.0, 1.0, 2.0),
                split=split,
                status=status,
                reason=None if status == "ok" else "unreadable",
            )
        )
    return write_manifest(root / "manifest.jsonl", records)


def data_cfg(**overrides):
    base = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "slices2d.yaml")
    base.patch_size = 16
    return OmegaConf.merge(base, OmegaConf.create(overrides))


# ---- encoder -----------------------------------------------------------------------------------------------
def test_percentile_encoder_maps_percentiles_to_unit_range_and_round_trips():
    vol = phantom()
    enc = Encoder().for_volume(vol)
    lo, hi = np.percentile(vol, [0.5, 99.5])
    assert enc.low == pytest.approx(lo) and enc.high == pytest.approx(hi)
    y = enc.encode(vol)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    inside = (vol >= lo) & (vol <= hi)
    np.testing.assert_allclose(enc.decode(y)[inside], vol[inside], rtol=1e-4, atol=1e-3)
    t = enc.encode(torch.from_numpy(vol))
    np.testing.assert_allclose(t.numpy(), y, atol=1e-5)
    np.testing.assert_allclose(enc.decode(t).numpy(), enc.decode(y), rtol=1e-5, atol=1e-3)


def test_ct_window_encoder_and_dict_round_trip():
    enc = build_encoder({"kind": "auto", "window": [-1000, 1000]}, modality="CT")
    assert enc.kind == "window" and enc.fit == "global"
    hu = np.array([-2000.0, -1000.0, 0.0, 500.0, 3000.0], np.float32)
    np.testing.assert_allclose(enc.encode(hu), [-1.0, -1.0, 0.0, 0.5, 1.0], atol=1e-6)
    assert Encoder.from_dict(enc.to_dict()) == enc
    assert build_encoder({"kind": "auto"}, modality="MR").kind == "percentile"


def test_global_encoder_fits_once_and_unfitted_encoder_refuses():
    vols = [phantom(seed=0), 2 * phantom(seed=1)]
    enc = Encoder(fit="global").fit_global(vols)
    assert enc.fitted and enc.for_volume(vols[0]) is enc  # not re-fitted per volume
    with pytest.raises(ValueError, match="not fitted"):
        Encoder().encode(vols[0])
    with pytest.raises(ValueError, match="kind"):
        Encoder(kind="zscore")
    with pytest.raises(ValueError, match="data.encoder.kind"):
        build_encoder({"kind": "zscore"}, "MR")


# ---- splits, transforms ------------------------------------------------------------------------------------
def test_slice_split_holds_out_disjoint_slabs_with_a_gap():
    split = SliceSplit(axis=2, val=0.2, test=0.2, gap=2)
    b = split.bounds(20)
    assert b == {"train": (0, 8), "val": (10, 14), "test": (16, 20)}
    assert b["train"][1] + split.gap <= b["val"][0] and b["val"][1] + split.gap <= b["test"][0]
    assert b["test"][1] == 20 and b["val"][1] > b["val"][0] and b["train"][1] > 0
    regions = split_regions([(8, 8, 20)], "val", split)
    assert regions == [Region(0, (0, 0, b["val"][0]), (8, 8, b["val"][1]))]
    with pytest.raises(ValueError, match="no training slices"):
        SliceSplit(val=0.5, test=0.4, gap=2).bounds(10)
    with pytest.raises(ValueError, match="axis"):
        SliceSplit(axis=3)


def test_patch_shape_needs_multiples_of_8_and_the_task_scale():
    assert patch_shape(16, 2, (4, 4)) == (16, 16)
    assert patch_shape([24, 16, 8], 3, (1, 1, 1)) == (24, 16, 8)
    with pytest.raises(ValueError, match="multiple of 8"):
        patch_shape(20, 2)
    with pytest.raises(ValueError, match="multiple of 24"):
        patch_shape(16, 2, (3, 3))


def test_crop_or_pad_and_flips_keep_values():
    x = np.arange(2 * 5 * 12, dtype=np.float32).reshape(2, 5, 12)
    y = crop_or_pad(x, (8, 8))
    assert y.shape == (2, 8, 8)
    assert (y[:, :1] == -1).all() and (y[:, -2:] == -1).all()  # padded with background
    np.testing.assert_array_equal(y[:, 1:6], x[:, :, 2:10])  # centred crop
    rng = np.random.default_rng(0)
    z = random_flip_rot90(y, rng)
    assert z.shape == y.shape and np.array_equal(np.sort(z, axis=None), np.sort(y, axis=None))


# ---- sampler -----------------------------------------------------------------------------------------------
def test_sampler_is_seeded_resumable_and_sharded():
    keys = list(islice(ResumableSampler(10, seed=3), 25))
    assert keys == list(islice(ResumableSampler(10, seed=3), 25))
    assert keys[10:25] == list(islice(ResumableSampler(10, seed=3, start=10), 15))  # resume mid-stream
    assert sorted(k for k, _ in keys[:10]) == list(range(10))  # an epoch is a permutation
    assert len({s for _, s in keys}) == 25  # every key has its own augmentation seed
    r0 = [k for k, _ in islice(ResumableSampler(10, seed=3, rank=0, world_size=2), 5)]
    r1 = [k for k, _ in islice(ResumableSampler(10, seed=3, rank=1, world_size=2), 5)]
    assert sorted(r0 + r1) == list(range(10))  # ranks split an epoch
    weighted = [k for k, _ in islice(ResumableSampler(4, weights=np.array([0, 1, 1, 2.0]), seed=0), 200)]
    assert 0 not in weighted and weighted.count(3) > weighted.count(1)
    with pytest.raises(ValueError, match="weights"):
        ResumableSampler(3, weights=np.array([1.0, -1.0, 1.0]))


# ---- datasets ----------------------------------------------------------------------------------------------
def test_slices_from_manifest_skip_empty_slices_and_weight_by_foreground(tmp_path):
    manifest = write_archive(tmp_path, empty_slices=3)
    data = build_training_data(data_cfg(), manifest, (4, 4))
    assert data.modality == "MR" and data.spatial_dims == 2 and data.patch == (16, 16)
    assert len(data.train) == SHAPE[2] - 3  # empty slices skipped
    assert data.weights is not None and data.weights.shape == (len(data.train),) and data.weights.min() > 0
    x = data.train[(0, 123)]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, data.train[(0, 123)])  # a key is reproducible
    assert data.val is not None and len(data.val_keys) == 4
    assert data.val[data.val_keys[0]].shape == (1, 16, 16)


def test_volume_cache_is_lazy_and_bounded(tmp_path):
    manifest = write_archive(tmp_path, splits=("train", "train", "train"))
    from medrecon.manifest import read_manifest

    cache = VolumeCache(read_manifest(manifest), Encoder(), capacity=2)
    assert cache.loads == 0
    cache.get(0), cache.get(1), cache.get(0), cache.get(2)  # 1 is least recently used, evicted
    assert cache.loads == 3 and len(cache._cache) == 2
    cache.get(1)
    assert cache.loads == 4


def test_context_slices_3d_patches_and_all_axes(tmp_path):
    manifest = write_archive(tmp_path)
    ctx = build_training_data(data_cfg(context=1), manifest, (4, 4))
    stack = ctx.train[(0, 5)]
    assert stack.shape == (3, 16, 16)
    task = SuperResolutionTask(factor=4)
    x0, meas, cond = training_pair(task, torch.stack([stack, stack]), 1, torch.Generator().manual_seed(0))
    assert x0.shape == (2, 1, 16, 16) and cond.shape == (2, 3, 16, 16) and meas.y.shape == (2, 1, 4, 4)
    torch.testing.assert_close(x0[:, 0], stack[1].expand(2, 16, 16))
    all_axes = build_training_data(data_cfg(axis="all", foreground=None), manifest, ())
    assert len(all_axes.train) == sum(SHAPE) and all_axes.weights is None
    p3 = build_training_data(data_cfg(spatial_dims=3, patch_size=[16, 16, 8]), manifest, (4, 4, 1))
    assert p3.train[(0, 7)].shape == (1, 16, 16, 8) and p3.val[0].shape == (1, 16, 16, 8)
    with pytest.raises(ValueError, match="context"):
        build_training_data(data_cfg(spatial_dims=3, context=1), manifest, ())


def test_single_scan_slice_split_keeps_held_out_slices_out_of_training(tmp_path):
    manifest = write_archive(tmp_path, splits=("test",))  # the one scan's manifest split does not matter
    cfg = data_cfg(slice_split={"axis": 2, "val": 0.25, "test": 0.25, "gap": 1}, foreground=None)
    data = build_training_data(cfg, manifest, ())
    bounds = SliceSplit(2, 0.25, 0.25, 1).bounds(SHAPE[2])
    assert len(data.train) == bounds["train"][1]
    assert len(data.val) == bounds["val"][1] - bounds["val"][0]
    train_slices = {ref.index for ref in data.train.refs}
    assert max(train_slices) < bounds["val"][0] - 1  # the gap separates train from val


def test_stack_neighbours_clamps_at_the_volume_edges():
    cond = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    out = stack_neighbours(cond, 1)
    assert out.shape == (4, 3, 2, 2)
    assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


def test_dataset_helpers_directly():
    vol = Encoder().for_volume(phantom()).encode(phantom())

    class Cache:
        def get(self, i):
            return vol

    regions = [Region(0, (0, 0, 0), SHAPE)]
    refs, weights = slice_index(Cache(), regions, (2,), Foreground(min_fraction=0.0))
    ds = SliceDataset(Cache(), regions, refs, (16, 16), context=2)
    assert ds[0].shape == (5, 16, 16)
    patches = PatchDataset(Cache(), regions, (8, 8, 8), foreground=Foreground())
    assert patches[(0, 1)].shape == (1, 8, 8, 8)
    assert evaluation_subset(3, 10) == [0, 4, 9]
    assert evaluation_subset(5, 2) == [0, 1]


# ---- user errors -------------------------------------------------------------------------------------------
def test_manifest_errors_are_usage_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UsageError, match="no records|holds no"):
        build_training_data(data_cfg(), empty, ())
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(UsageError, match="not a valid"):
        build_training_data(data_cfg(), bad, ())
    with pytest.raises(UsageError, match="does not exist"):
        build_training_data(data_cfg(), tmp_path / "missing.jsonl", ())
    only_val = write_archive(tmp_path / "v", splits=("val",))
    with pytest.raises(UsageError, match="no records with status 'ok' in split 'train'"):
        build_training_data(data_cfg(), only_val, ())


def test_slice_split_end_moves_the_held_out_block_inside_the_volume():
    split = SliceSplit(axis=2, val=0.1, test=0.1, gap=2, end=0.6)
    b = split.bounds(40)
    assert b["test"] == (20, 24) and b["val"] == (14, 18) and b["train"] == (0, 12)
    assert split.train_ranges(40) == [(0, 12), (26, 40)]
    train = split_regions([(8, 8, 40)], "train", split)
    held_out = set(range(*b["val"])) | set(range(*b["test"]))
    trained = {k for r in train for k in range(r.lo[2], r.hi[2])}
    assert trained == set(range(0, 12)) | set(range(26, 40))
    # every held-out slice is at least `gap` slices away from every training slice
    assert min(abs(t - h) for t in trained for h in held_out) > split.gap
    with pytest.raises(ValueError, match="end"):
        SliceSplit(end=0.0)


def test_single_slice_volumes_train_2d_models_only(tmp_path, caplog):
    """A (I, J, 1) volume gives one slice across axis 2; no lines across axes 0/1, nothing to a 3D model or a
    slice split (left out with too_few_slices, the other volumes still train)."""
    manifest = write_archive(tmp_path)  # two (24, 24, 12) volumes, train and val
    records = read_manifest(manifest)
    flat = tmp_path / "flat.nii.gz"
    write_nifti(Volume(phantom((24, 24, 1), seed=5), np.diag([1.0, 1.0, 2.0, 1.0])), flat)
    records.append(
        ManifestRecord(id="s-" + "f" * 16, format="nifti", paths=[flat], modality="MR", shape=(24, 24, 1),
                       spacing=(1.0, 1.0, 2.0), split="train", status="ok")
    )  # fmt: skip
    write_manifest(manifest, records)
    along_k = build_training_data(data_cfg(foreground=None), manifest, (4, 4))
    assert len(along_k.train) == SHAPE[2] + 1 and along_k.train[(SHAPE[2], 3)].shape == (1, 16, 16)
    all_axes = build_training_data(data_cfg(axis="all", foreground=None), manifest, ())
    assert len(all_axes.train) == sum(SHAPE) + 1  # the flat volume adds its one slice across axis 2 only
    caplog.clear()
    p3 = build_training_data(data_cfg(spatial_dims=3, patch_size=[16, 16, 8]), manifest, (4, 4, 1))
    assert len(p3.train) == 1 and "too_few_slices" in caplog.text
    split = {"axis": 2, "val": 0.25, "test": 0.25, "gap": 1}
    sliced = build_training_data(data_cfg(slice_split=split, foreground=None), manifest, ())
    assert {ref.region for ref in sliced.train.refs} == {0, 1}  # the two thick volumes' training slabs
    only_flat = tmp_path / "flat.jsonl"
    write_manifest(only_flat, records[-1:])
    with pytest.raises(ValueError, match="enough slices"):
        build_training_data(data_cfg(spatial_dims=3, patch_size=[16, 16, 8]), only_flat, (4, 4, 1))
