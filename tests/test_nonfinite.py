"""Non-finite voxels (medrecon.io.finite) through every command: NaN backgrounds, one NaN, one inf, all NaN."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medrecon.cli import main, run_command
from medrecon.data.encoder import Encoder
from medrecon.data.source import VolumeCache
from medrecon.evaluate.metrics import volume_metrics
from medrecon.io import nifti
from medrecon.io.archive import discover, load_item
from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.finite import NonFinite, NonFiniteOutput, apply_policy, fill_nan, require_finite
from medrecon.io.nifti import inspect_nifti, read_nifti
from medrecon.manifest import ManifestRecord, read_manifest, write_manifest
from medrecon.recon.ledger import read_records
from medrecon.train.state import load_state

SHAPE = (16, 16, 8)
AFFINE = np.diag([0.9, 0.9, 2.0, 1.0])
NAMES = ("background", "one_nan", "one_inf", "all_nan")


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like disk (values 100-140 inside, 0-5 outside) and the disk mask."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    disk = np.broadcast_to((((i - 7.5) ** 2 + (j - 7.5) ** 2) < 6.5**2)[..., None], SHAPE)
    arr = np.where(disk, 100 + 40 * rng.random(SHAPE), 5 * rng.random(SHAPE)).astype(np.float32)
    return arr, disk


def volumes(seed: int = 0) -> dict[str, np.ndarray]:
    arr, disk = phantom(seed)
    background = arr.copy()
    background[~disk] = np.nan  # as SPM/FSL/ANTs write a masked image
    one_nan, one_inf = arr.copy(), arr.copy()
    one_nan[8, 8, 4] = np.nan
    one_inf[8, 8, 4] = np.inf
    return {
        "background": background,
        "one_nan": one_nan,
        "one_inf": one_inf,
        "all_nan": np.full(SHAPE, np.nan, np.float32),
    }


def save(array: np.ndarray, path, dtype=np.float32) -> None:
    """Write with nibabel directly (medrecon's writer is for outputs)."""
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), AFFINE)
    img.set_sform(AFFINE, code=1)
    nib.save(img, str(path))


def assert_all_outputs_finite(out) -> int:
    """Every NIfTI under ``out`` is finite; returns how many there were."""
    files = sorted(out.rglob("*.nii.gz"))
    for path in files:
        assert np.isfinite(nib.load(str(path)).get_fdata()).all(), path.name
    return len(files)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The four cases as NIfTI files, their truth, and a prepared manifest (everything in the test split)."""
    root = tmp_path_factory.mktemp("nonfinite")
    truth = volumes()
    for name, array in truth.items():
        save(array, root / f"{name}.nii.gz")
    manifest = root / "manifest.jsonl"
    args = [f"input={root}", f"manifest={manifest}", "split.train=0", "split.val=0", "split.test=1"]
    assert run_command("prepare", args) == 0
    records = {r.paths[0].name.split(".")[0]: r for r in read_manifest(manifest)}
    return root, truth, manifest, records


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_reconstruct import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", perturb=True)


# ------------------------------------------------------------------------------------------------ the policy
def test_counts_fill_and_refusals():
    arr = np.array([[[1.0, np.nan], [np.inf, -np.inf]], [[-3.0, np.nan], [2.0, 0.5]]], np.float32)
    assert NonFinite.count(arr) == NonFinite(nan=2, posinf=1, neginf=1)
    assert NonFinite.count(np.arange(8, dtype=np.int16)) == NonFinite()
    assert NonFinite.from_dict(NonFinite(3, 1, 0).to_dict()) == NonFinite(3, 1, 0)
    with pytest.raises(ValueError):
        NonFinite.from_dict({"nan": -1})
    with pytest.raises(RejectedInput) as err:
        apply_policy(arr)
    assert err.value.reason is Reason.NON_FINITE_VALUES and "1 +inf, 1 -inf" in err.value.detail
    finite_nan = np.where(np.isinf(arr), 7.0, arr).astype(np.float32)
    filled, meta = apply_policy(finite_nan.copy())
    assert meta == {"nonfinite": {"nan": 2, "posinf": 0, "neginf": 0}, "nan_fill": -3.0}
    assert np.isfinite(filled).all() and np.count_nonzero(filled == -3.0) == 3  # the minimum, and the 2 NaN
    kept, meta = apply_policy(finite_nan.copy(), keep_nan=True)
    assert np.isnan(kept).sum() == 2 and "nan_fill" not in meta
    with pytest.raises(RejectedInput, match="all 8 voxels are NaN"):
        apply_policy(np.full((2, 2, 2), np.nan, np.float32))
    assert fill_nan(np.ones((2, 2, 2), np.float32))[1] is None
    with pytest.raises(NonFiniteOutput, match="1 NaN"):
        require_finite(torch.tensor([0.0, float("nan")]), "x")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, ">f8"])
def test_inspection_counts_across_chunk_boundaries(tmp_path, monkeypatch, suffix, dtype):
    """An odd chunk size splits voxels across chunks: the counts must still be exact."""
    monkeypatch.setattr(nifti, "_GZIP_CHUNK", 1001)
    arr = volumes()["background"]
    arr[0, 0, 0] = 0.0  # a finite voxel among the NaN: counted exactly, not by chunks
    save(arr, tmp_path / f"v{suffix}", dtype)
    info = inspect_nifti(tmp_path / f"v{suffix}")
    assert info.nonfinite == NonFinite(nan=int(np.isnan(arr).sum()))
    save(np.where(np.isnan(arr), -np.inf, arr), tmp_path / f"w{suffix}", dtype)
    with pytest.raises(RejectedInput) as err:
        inspect_nifti(tmp_path / f"w{suffix}")
    assert err.value.reason is Reason.NON_FINITE_VALUES and "-inf" in err.value.detail


def test_integer_voxels_and_a_negative_slope(tmp_path):
    save(np.arange(np.prod(SHAPE)).reshape(SHAPE), tmp_path / "int.nii.gz", np.int16)
    assert inspect_nifti(tmp_path / "int.nii.gz").nonfinite == NonFinite()
    img = nib.Nifti1Image(np.where(volumes()["one_inf"] > 0, volumes()["one_inf"], 0), AFFINE)
    img.set_sform(AFFINE, code=1)
    img.header.set_slope_inter(-2.0, 0.0)
    nib.save(img, str(tmp_path / "flipped.nii.gz"))
    with pytest.raises(RejectedInput, match=r"1 -inf"):  # +inf stored, -inf after scl_slope = -2
        inspect_nifti(tmp_path / "flipped.nii.gz")


def test_kspace_with_a_nan_sample_is_refused_and_a_target_background_is_filled(tmp_path):
    from test_kspace_h5 import _kspace, _write

    from medrecon.io.archive import Item
    from medrecon.io.kspace_h5 import read_kspace_h5

    kspace = _kspace((3, 4, 16, 12))
    target = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32)
    target[:, :2] = np.nan
    good = _write(tmp_path / "good.h5", kspace, target=target)
    volume = load_item(Item(id="s-good", format="h5", paths=[good]))
    assert np.isfinite(volume.array).all() and volume.meta["nonfinite"]["nan"] == 3 * 2 * 8
    kspace[1, 2, 3, 4] = np.nan
    bad = _write(tmp_path / "bad.h5", kspace)
    with pytest.raises(RejectedInput) as err:
        read_kspace_h5(bad)
    assert err.value.reason is Reason.NON_FINITE_VALUES and "1 of" in err.value.detail


# ------------------------------------------------------------------------------------------------ prepare
def test_prepare_records_counts_and_refuses_infinities(archive):
    _, truth, manifest, records = archive
    background = records["background"]
    assert background.status == "ok"
    assert background.nonfinite == NonFinite(nan=int(np.isnan(truth["background"]).sum()))
    assert records["one_nan"].status == "ok" and records["one_nan"].nonfinite == NonFinite(nan=1)
    for name in ("one_inf", "all_nan"):
        assert records[name].status == "rejected" and records[name].reason == "non_finite_values", name
    assert "1 +inf" in records["one_inf"].detail and "are NaN" in records["all_nan"].detail
    line = json.loads(next(x for x in manifest.read_text().splitlines() if background.id in x))
    assert line["nonfinite"] == {"nan": background.nonfinite.nan, "posinf": 0, "neginf": 0}


def test_manifests_without_the_field_still_read(tmp_path):
    path = tmp_path / "old.jsonl"
    old = {"id": "s-1", "format": "nifti", "paths": ["a.nii"], "split": "train", "status": "ok"}
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_manifest(path)
    assert record.nonfinite is None
    write_manifest(path, [record])
    assert json.loads(path.read_text())["nonfinite"] is None
    assert read_manifest(path)[0].nonfinite is None


# ------------------------------------------------------------------------------------------------ load_item
def test_load_item_fills_nan_with_the_background_value(archive):
    _, truth, _, records = archive
    volume = load_item(records["background"])
    arr, disk = phantom()
    expected_fill = float(np.nanmin(truth["background"]))
    assert np.isfinite(volume.array).all()
    np.testing.assert_array_equal(volume.array[~disk], expected_fill)
    np.testing.assert_array_equal(volume.array[disk], arr[disk])
    assert volume.meta["nonfinite"] == {"nan": int((~disk).sum()), "posinf": 0, "neginf": 0}
    assert volume.meta["nan_fill"] == expected_fill
    assert np.isnan(load_item(records["background"], keep_nan=True).array).sum() == (~disk).sum()
    # a record prepare accepted whose file now holds an infinity is refused at load time too
    stale = ManifestRecord("s-x", "nifti", records["one_inf"].paths, None, SHAPE, None, "test", "ok")
    with pytest.raises(RejectedInput) as err:
        load_item(stale)
    assert err.value.reason is Reason.NON_FINITE_VALUES


# ------------------------------------------------------------------------------------------------ reconstruct
def reconstruct(*overrides) -> int:
    return run_command("reconstruct", ["progress=false", *[str(o) for o in overrides]])


def by_name(out, records) -> dict:
    recs = {r.id: r for r in read_records(out / "run.jsonl")}
    return {name: recs[rec.id] for name, rec in records.items()}


@pytest.mark.parametrize("method", ["bicubic", "diffusion"])
def test_reconstruct_fills_notes_refuses_and_writes_finite_outputs(archive, checkpoint, tmp_path, method):
    root, truth, _, records = archive
    out = tmp_path / method
    args = ["task=sr2x"] if method == "bicubic" else [f"checkpoint={checkpoint}", "sampler.steps=2"]
    assert reconstruct(f"input={root}", f"out={out}", f"method={method}", *args) == 3  # some failed
    recs = by_name(out, records)
    for name in ("background", "one_nan"):
        rec = recs[name]
        nan = int(np.isnan(truth[name]).sum())
        assert rec.status == "ok" and rec.nonfinite == NonFinite(nan=nan), name
        assert f"{nan} NaN voxel(s) read as the background value" in rec.detail
        output = read_nifti(out / rec.outputs[0]).array
        assert output.shape == (32, 32, 8)
    for name in ("one_inf", "all_nan"):
        assert recs[name].status == "failed" and recs[name].reason == "non_finite_values", name
        assert not (out / f"{recs[name].id}.nii.gz").exists()
    assert assert_all_outputs_finite(out) == 2
    log = (out / "reconstruct.log").read_text()
    assert f"item {recs['background'].id}: {recs['background'].nonfinite.nan} NaN voxel(s)" in log


def test_reconstruct_single_nan_stays_local_with_the_diffusion_model(archive, checkpoint, tmp_path):
    """The issue: one NaN voxel made its whole slice NaN. Now the result equals that of the same volume with
    the NaN voxel set to the background value by hand."""
    root, truth, _, records = archive
    by_hand = truth["one_nan"].copy()
    by_hand[8, 8, 4] = np.nanmin(by_hand)
    (tmp_path / "by_hand").mkdir()
    save(by_hand, tmp_path / "by_hand" / "one_nan.nii.gz")  # same name: same id, same seeds
    results = []
    for n, path in enumerate((root / "one_nan.nii.gz", tmp_path / "by_hand" / "one_nan.nii.gz")):
        out = tmp_path / f"out{n}"
        assert reconstruct(f"input={path}", f"out={out}", f"checkpoint={checkpoint}", "sampler.steps=2") == 0
        (rec,) = read_records(out / "run.jsonl")
        results.append(read_nifti(out / rec.outputs[0]).array)
    assert np.isfinite(results[0]).all()
    np.testing.assert_array_equal(results[0], results[1])


def test_a_non_finite_reconstruction_is_not_written(archive, tmp_path, monkeypatch):
    from medrecon.recon.methods import BaselineMethod

    root, _, _, records = archive
    real = BaselineMethod.__call__

    def poisoned(self, meas, cond, seeds):
        mean, std = real(self, meas, cond, seeds)
        mean[0, 0, 0, 0] = float("nan")
        return mean, std

    monkeypatch.setattr(BaselineMethod, "__call__", poisoned)
    out = tmp_path / "poisoned"
    assert reconstruct(f"input={root / 'one_nan.nii.gz'}", f"out={out}", "method=bicubic", "task=sr2x") == 3
    (rec,) = read_records(out / "run.jsonl")
    assert rec.status == "failed" and rec.reason == "non_finite_output" and "1 NaN" in rec.detail
    assert assert_all_outputs_finite(out) == 0


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_scores_finite_ground_truth_and_counts_what_it_excluded(archive, checkpoint, tmp_path):
    root, truth, _, records = archive
    manifest = tmp_path / "all_ok.jsonl"  # a manifest that says ok for all four: load time must judge
    write_manifest(
        manifest,
        [ManifestRecord(r.id, "nifti", r.paths, None, SHAPE, None, "test", "ok") for r in records.values()],
    )
    out = tmp_path / "eval"
    args = [f"manifest={manifest}", f"out={out}", f"checkpoint={checkpoint}", "sampler.steps=2"]
    assert run_command("evaluate", [*args, "methods=[bicubic,diffusion]"]) == 3  # inf and all-NaN fail
    report = json.loads((out / "report.json").read_text())
    for method in ("bicubic", "diffusion"):
        entry = report["methods"][method]
        assert entry["volumes"] == 2
        for metric in ("psnr", "ssim", "nmse", "psnr_fg", "ssim_fg"):
            assert entry[metric] is not None and math.isfinite(entry[metric]), (method, metric)
    failed = {f["id"]: f["reason"] for f in report["failed"]}
    assert failed == {records["one_inf"].id: "non_finite_values", records["all_nan"].id: "non_finite_values"}
    nan_bg, nan_one = (int(np.isnan(truth[n]).sum()) for n in ("background", "one_nan"))
    assert report["nonfinite"]["volumes"] == 2
    assert (
        report["nonfinite"]["replaced_voxels"] == report["nonfinite"]["excluded_voxels"] == nan_bg + nan_one
    )
    items = {i.pop("id"): i for i in report["nonfinite"]["items"]}
    assert items[records["background"].id] == {"replaced": nan_bg, "excluded": nan_bg}
    assert items[records["one_nan"].id] == {"replaced": 1, "excluded": 1}
    md = (out / "report.md").read_text()
    assert f"held {nan_bg + nan_one} NaN voxel(s)" in md and "excluded from every metric" in md
    assert "n/a" not in md.split("Notes:")[0]


def test_excluded_voxels_do_not_change_the_scores():
    arr, disk = phantom()
    rng = np.random.default_rng(1)
    pred = arr + rng.normal(0, 3, SHAPE).astype(np.float32)
    a = volume_metrics(arr, pred, slice_axis=2, valid=disk)
    other = np.where(disk, pred, 1e4)  # anything at all outside the valid voxels
    b = volume_metrics(arr, other, slice_axis=2, valid=disk)
    assert a == b and all(math.isfinite(v) for v in a.as_dict().values())
    assert volume_metrics(arr, pred, slice_axis=2, valid=np.ones(SHAPE, bool)) == volume_metrics(
        arr, pred, slice_axis=2
    )
    with pytest.raises(ValueError, match="no voxel"):
        volume_metrics(arr, pred, valid=np.zeros(SHAPE, bool))


# ------------------------------------------------------------------------------------------------ train
@pytest.fixture(scope="module")
def nan_manifest(tmp_path_factory):
    """Two 24x24x12 volumes with NaN backgrounds (train, val), prepared by medrecon prepare."""
    root = tmp_path_factory.mktemp("nan_train")
    records = []
    for n, split in enumerate(("train", "val")):
        rng = np.random.default_rng(n)
        i, j = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 24), indexing="ij")
        inside = np.broadcast_to(((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1)[..., None], (24, 24, 12))
        arr = np.where(inside, 100 + 20 * rng.random((24, 24, 12)), np.nan).astype(np.float32)
        save(arr, root / f"vol{n}.nii.gz")
        found = {i.paths[0].name: i for i in discover(root).items}[f"vol{n}.nii.gz"]
        assert found.nonfinite.nan == int((~inside).sum())
        records.append(
            ManifestRecord(found.id, "nifti", found.paths, "MR", found.shape, found.spacing, split, "ok",
                           nonfinite=found.nonfinite)
        )  # fmt: skip
    return write_manifest(root / "manifest.jsonl", records)


def train(manifest, out, *extra) -> int:
    args = [
        "train", f"manifest={manifest}", f"out={out}", "task=sr4x", "model=unet_tiny", "device=cpu",
        "data.patch_size=16", "train.batch_size=2", "train.warmup=1", "progress=false",
        "train.log_every=1", *extra,
    ]  # fmt: skip
    return main(args)


def test_train_on_nan_backgrounds_has_no_non_finite_step(nan_manifest, tmp_path):
    out = tmp_path / "run"
    assert train(nan_manifest, out, "train.steps=12", "train.val_every=6", "train.ckpt_every=12") == 0
    state = load_state(out / "state_00000012.pt")
    assert state["bad_total"] == 0
    weights = load_file(out / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert "non-finite" not in (out / "train.log").read_text()


def test_the_guard_names_the_record_when_the_batch_itself_is_not_finite(nan_manifest, tmp_path, monkeypatch):
    """Bypass the data layer's guarantee (a poisoned cache): the stop message blames the data, by id."""
    real = VolumeCache.get

    def poisoned(self, index):
        encoded = real(self, index).copy()
        encoded[...] = np.nan
        return encoded

    monkeypatch.setattr(VolumeCache, "get", poisoned)
    out = tmp_path / "poisoned"
    args = ("train.steps=5", "train.val_every=0", "train.max_bad_steps=2", "data.foreground=null")
    assert train(nan_manifest, out, *args) == 1
    log = (out / "train.log").read_text()
    train_id = read_manifest(nan_manifest)[0].id
    assert "the cause is the data, not the optimiser" in log and train_id in log
    assert "lower train.lr" not in log


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_the_cache_refuses_an_encoding_that_is_not_finite(nan_manifest):
    record = read_manifest(nan_manifest)[0]
    # 2 / (high - low) overflows float32: every encoded voxel is inf
    degenerate = Encoder(kind="percentile", fit="global", low=0.0, high=1e-45, clip=False)
    with pytest.raises(ValueError, match=f"record {record.id}: encoding gave non-finite values"):
        VolumeCache([record], degenerate).get(0)
