"""prepare: discovery over a mixed archive, stable anonymous ids, deterministic splits, manifest I/O, CLI."""

import json
import shutil

import h5py
import numpy as np
import pydicom
import pytest
from omegaconf import OmegaConf
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from medrecon import prepare
from medrecon.cli import main
from medrecon.errors import UsageError
from medrecon.io.archive import discover, load_item
from medrecon.io.dicom_write import write_dicom_series
from medrecon.io.errors import RejectedInput
from medrecon.io.nifti import write_nifti
from medrecon.manifest import ManifestError, ManifestRecord, read_manifest, write_manifest
from medrecon.volume import Volume

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-98765"


def _volume(shape=(8, 8, 5), seed=0):
    data = np.random.default_rng(seed).uniform(0, 500, size=shape).astype(np.float32)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    affine[:3, 3] = [-3.0, 4.0, 5.0]
    return Volume(data, affine, {"modality": "MR"})


def _series(folder, volume, seed):
    return write_dicom_series(
        volume, folder, derived=False, patient_name=PATIENT_NAME, patient_id=PATIENT_ID, uid_seed=seed
    )


def _dicomdir(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "ARCHIVE"
    ds.DirectoryRecordSequence = []
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _fastmri(path):
    k = np.random.default_rng(5).normal(size=(2, 2, 8, 6)).astype(np.complex64)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k)
        f.attrs["patient_id"] = PATIENT_ID


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A folder with every case prepare must sort out (see EXPECTED)."""
    root = tmp_path_factory.mktemp("archive")
    clean = _volume()
    _series(root / "clean", clean, "clean")
    # the same images exported again (new UIDs) under shuffled names, so file order is not slice order
    staged = _series(root / "staging", clean, "copy")
    (root / "copy").mkdir()
    for k, path in zip([3, 0, 4, 1, 2], staged):
        path.rename(root / "copy" / f"IM{k:03d}")
    (root / "staging").rmdir()
    missing = _series(root / "gap", _volume(shape=(8, 8, 6), seed=1), "gap")
    missing[2].unlink()
    cut = _series(root / "cut", _volume(shape=(8, 8, 4), seed=2), "cut")
    cut[1].write_bytes(cut[1].read_bytes()[:-200])
    (root / "junk").mkdir()
    (root / "junk" / "random.dcm").write_bytes(np.random.default_rng(3).bytes(3000))
    _dicomdir(root / "DICOMDIR")
    write_nifti(_volume(shape=(6, 7, 5), seed=4), root / "nifti" / "brain.nii.gz")
    (root / "raw").mkdir()
    _fastmri(root / "raw" / "knee.h5")
    (root / ".DS_Store").write_bytes(b"hidden files are skipped")
    return root


EXPECTED = {
    ("clean", "dicom", "ok", None),
    ("copy", "dicom", "ok", None),
    ("gap", "dicom", "rejected", "missing_slice"),
    ("cut", "dicom", "rejected", "truncated_pixels"),
    ("junk", "dicom", "rejected", "not_dicom"),
    ("DICOMDIR", "dicom", "rejected", "non_image"),
    ("nifti", "nifti", "ok", None),
    ("raw", "h5", "ok", None),
}


def _cfg(root, manifest, **split):
    return OmegaConf.create(
        {
            "input": str(root),
            "manifest": str(manifest),
            "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0, "by": "patient", **split},
        }
    )


def _top(root, record):
    return record.paths[0].relative_to(root).parts[0]


def test_prepare_classifies_the_archive(archive, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    assert prepare.run(_cfg(archive, manifest)) == 0
    out = capsys.readouterr().out
    assert "missing_slice" in out and "ok per split" in out
    records = read_manifest(manifest)
    assert {(_top(archive, r), r.format, r.status, r.reason) for r in records} == EXPECTED
    by_top = {_top(archive, r): r for r in records}
    clean, copy = by_top["clean"], by_top["copy"]
    assert clean.shape == copy.shape == (8, 8, 5) and clean.spacing == copy.spacing == pytest.approx(
        (0.9, 0.9, 3.0)
    )
    assert clean.modality == "MR" and clean.id != copy.id
    # the copy's files are listed in slice order, not name order
    assert [p.name for p in copy.paths] == ["IM003", "IM000", "IM004", "IM001", "IM002"]
    assert clean.split == copy.split  # one patient, one split
    assert by_top["nifti"].shape == (6, 7, 5) and by_top["raw"].shape == (6, 8, 2)
    for record in records:
        assert record.id.startswith("s-") and len(record.id) == 18
        assert record.status == "ok" or record.detail
    text = manifest.read_text()
    assert "Doe" not in text and "98765" not in text
    # the manifest lies outside the archive: absolute paths
    assert all(json.loads(line)["paths"][0].startswith("/") for line in text.splitlines())


def test_ids_and_splits_are_stable(archive, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    prepare.run(_cfg(archive, first))
    prepare.run(_cfg(archive, second))
    assert first.read_text() == second.read_text()
    moved = tmp_path / "elsewhere"
    shutil.copytree(archive, moved)
    prepare.run(_cfg(moved, moved / "manifest.jsonl"))
    ids = lambda m: sorted((r.id, r.split) for r in read_manifest(m))  # noqa: E731
    assert ids(first) == ids(moved / "manifest.jsonl")
    reseeded = tmp_path / "c.jsonl"
    prepare.run(_cfg(archive, reseeded, seed=7))
    assert sorted(r.id for r in read_manifest(reseeded)) == [i for i, _ in ids(first)]


def test_prepare_reads_no_pixels(archive, tmp_path, monkeypatch):
    calls, pixel_reads = [], []
    dcmread = pydicom.dcmread

    def spy_dcmread(*args, **kwargs):
        calls.append(bool(kwargs.get("stop_before_pixels")))
        return dcmread(*args, **kwargs)

    pixel_array = Dataset.pixel_array

    def spy_pixels(self):
        pixel_reads.append(1)
        return pixel_array.fget(self)

    monkeypatch.setattr(pydicom, "dcmread", spy_dcmread)
    monkeypatch.setattr(Dataset, "pixel_array", property(spy_pixels))
    prepare.run(_cfg(archive, tmp_path / "m.jsonl"))
    assert calls and all(calls), "prepare opened a DICOM file with its pixel data"
    assert pixel_reads == []
    record = next(r for r in read_manifest(tmp_path / "m.jsonl") if r.ok and r.format == "dicom")
    volume = load_item(record)
    assert len(pixel_reads) == 5 and not all(calls)
    assert volume.shape == record.shape


def test_load_item_round_trip_and_rejects(archive, tmp_path):
    manifest = archive / "manifest.jsonl"
    try:
        prepare.run(_cfg(archive, manifest))
        text = manifest.read_text()
        assert '"paths": ["clean/slice_0001.dcm"' in text  # inside the archive: relative paths
        moved = tmp_path / "moved"
        shutil.copytree(archive, moved)
    finally:
        manifest.unlink()
    records = {_top(moved, r): r for r in read_manifest(moved / "manifest.jsonl")}
    original = _volume()
    for name in ("clean", "copy"):
        volume = load_item(records[name])
        assert np.max(np.abs(volume.array - original.array)) < 500 / 130000 + 1e-4
        np.testing.assert_allclose(volume.affine, original.affine, atol=1e-4)
        assert volume.meta["id"] == records[name].id
    assert load_item(records["nifti"]).shape == (6, 7, 5)
    h5 = load_item(records["raw"])
    assert h5.shape == (6, 8, 2) and h5.meta["kspace_h5"]["image"] == "rss_ifft"
    with pytest.raises(RejectedInput) as info:
        load_item(records["gap"])
    assert info.value.reason.value == "missing_slice"


def test_discover_skips_the_manifest_and_hidden_files(archive, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    (copy / "manifest.jsonl").write_text("{}\n")
    found = discover(copy, exclude=[copy / "manifest.jsonl"])
    assert len(found.items) == len(EXPECTED) and len(found.ok) == 4
    assert not any(".DS_Store" in str(p) for item in found.items for p in item.paths)
    assert found.counts()[("dicom", "rejected", "not_dicom")] == 1
    assert discover(copy).counts()[("dicom", "rejected", "not_dicom")] == 2  # the manifest, when not excluded


def test_split_assignment_is_deterministic_and_follows_fractions():
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    keys = [f"s-{i:016x}" for i in range(20000)]
    splits = [prepare.assign_split(k, fractions, seed=3) for k in keys]
    assert splits == [prepare.assign_split(k, fractions, seed=3) for k in keys]
    for name, fraction in fractions.items():
        assert abs(splits.count(name) / len(keys) - fraction) < 0.015
    other = [prepare.assign_split(k, fractions, seed=4) for k in keys]
    assert other != splits
    assert {prepare.assign_split(k, {"train": 1.0, "val": 0.0, "test": 0.0}) for k in keys[:100]} == {"train"}


@pytest.mark.parametrize("split", [{"train": 0.5}, {"val": -0.1, "train": 1.0}, {"test": "x"}])
def test_bad_fractions_are_usage_errors(archive, tmp_path, split):
    with pytest.raises(UsageError, match="split"):
        prepare.run(_cfg(archive, tmp_path / "m.jsonl", **split))


class Recorder:
    """Stands in for the tqdm bar: what discover reports."""

    def __init__(self):
        self.totals, self.done = [], 0

    def reset(self, total=None):
        self.totals.append(total)

    def update(self, n=1):
        self.done += n


def test_discover_reports_every_file_it_examines(archive):
    from medrecon.io.archive import walk_files

    files = walk_files(archive)
    progress = Recorder()
    found = discover(archive, progress=progress)
    assert progress.totals == [len(files)] and progress.done == len(files)
    assert {(_top(archive, r), r.format, r.status, r.reason) for r in found.items} == EXPECTED


def test_prepare_shows_a_progress_bar_with_eta_on_stderr(archive, tmp_path, monkeypatch, capsys):
    from medrecon.io.archive import walk_files

    monkeypatch.chdir(tmp_path)
    n = len(walk_files(archive))
    assert main(["prepare", f"input={archive}", "manifest=m.jsonl"]) == 0
    captured = capsys.readouterr()
    bar = captured.err.replace("\r", "\n").splitlines()
    assert any(line.startswith("prepare: 100%") and f"{n}/{n} [" in line and "<" in line for line in bar)
    assert "prepare:" not in captured.out  # stdout holds the summary alone
    assert main(["prepare", f"input={archive}", "manifest=m2.jsonl", "progress=false"]) == 0
    assert "prepare:" not in capsys.readouterr().err
    assert main(["prepare", f"input={archive}", "manifest=m3.jsonl", "progress=maybe"]) == 2


def test_cli_prepare(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", f"input={archive}", "manifest=out/m.jsonl", "split.seed=1"]) == 0
    assert len(read_manifest(tmp_path / "out" / "m.jsonl")) == len(EXPECTED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no outputs/, .hydra/ or log files
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.jsonl"]
    assert main(["prepare", f"input={tmp_path / 'missing'}", "manifest=m.jsonl"]) == 2
    assert main(["prepare", f"input={archive}"]) == 2  # manifest is required


def test_missing_required_options_get_one_clear_line(capsys):
    assert main(["train", "manifest=m.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "missing required option(s): out=..." in err and "exception formatting" not in err
    assert main(["reconstruct"]) == 2
    assert "input=... out=..." in capsys.readouterr().err


def _record(**changes):
    fields = dict(
        id="s-0123456789abcdef",
        format="nifti",
        paths=["a.nii.gz"],
        modality=None,
        shape=[2, 3, 4],
        spacing=[1.0, 1.0, 2.0],
        split="train",
        status="ok",
        reason=None,
        detail="",
    )
    fields.update(changes)
    return json.dumps(fields)


def test_read_manifest_errors_name_the_problem(tmp_path):
    path = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(path)
    path.write_text("\n\n")
    with pytest.raises(ManifestError, match="no records"):
        read_manifest(path)
    path.write_text(_record() + "\n{not json\n")
    with pytest.raises(ManifestError, match="line 2"):
        read_manifest(path)
    path.write_text(_record(split="holdout") + "\n")
    with pytest.raises(ManifestError, match="line 1: 'split' is 'holdout'"):
        read_manifest(path)
    path.write_text(_record() + "\n" + _record() + "\n")
    with pytest.raises(ManifestError, match="line 2: id .* repeats line 1"):
        read_manifest(path)
    path.write_text(_record(status="rejected") + "\n")
    with pytest.raises(ManifestError, match="reason"):
        read_manifest(path)


def test_manifest_paths_relative_inside_absolute_outside(tmp_path):
    inside = ManifestRecord(
        "s-1", "nifti", [tmp_path / "d" / "a.nii.gz"], None, (2, 2, 2), (1.0,) * 3, "val", "ok"
    )
    write_manifest(tmp_path / "m.jsonl", [inside])
    assert json.loads((tmp_path / "m.jsonl").read_text())["paths"] == ["d/a.nii.gz"]
    back = read_manifest(tmp_path / "m.jsonl")[0]
    assert back.paths == inside.paths and back.shape == (2, 2, 2) and back.split == "val"
    assert read_manifest(tmp_path / "m.jsonl", root="/data")[0].paths[0].as_posix() == "/data/d/a.nii.gz"
    write_manifest(tmp_path / "sub" / "m.jsonl", [inside])
    assert json.loads((tmp_path / "sub" / "m.jsonl").read_text())["paths"] == [
        str(tmp_path / "d" / "a.nii.gz")
    ]
