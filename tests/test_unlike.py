"""The unlike-scan set: real scans from installed packages' test data, offline, all prepared ok in ``test``."""

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest

from medrecon.cli import main
from medrecon.evaluate.unlike import SCANS, build_unlike_archive, source_path
from medrecon.io.archive import load_item
from medrecon.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
MISSING = [f"{s.package}/{s.source}" for s in SCANS if source_path(s) is None]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if MISSING:
        pytest.skip(f"package test data not installed: {', '.join(MISSING)}")
    out = tmp_path_factory.mktemp("unlike")
    archive = build_unlike_archive(out)
    manifest = out / "manifest.jsonl"
    code = main(
        [
            "prepare",
            f"input={archive.archive}",
            f"manifest={manifest}",
            "split.train=0",
            "split.val=0",
            "split.test=1",
        ]
    )
    assert code == 0
    return archive, read_manifest(manifest)


def test_every_scan_is_written_from_the_installed_packages(built):
    archive, _ = built
    assert archive.missing == []
    assert sorted(archive.written) == sorted(s.name for s in SCANS)
    for scan in SCANS:
        src = source_path(scan)
        assert src is not None and src.is_file()
        if scan.kind != "nifti_frame0":  # copied byte for byte
            assert archive.written[scan.name].read_bytes() == src.read_bytes()
    sources = (archive.root / "SOURCES.md").read_text()
    for scan in SCANS:
        assert scan.name in sources and "MIT" in sources


def test_prepare_finds_every_scan_ok_in_the_test_split(built):
    _, records = built
    assert len(records) == len(SCANS)
    assert all(r.status == "ok" for r in records), [(r.paths, r.reason) for r in records]
    assert {r.split for r in records} == {"test"}
    by_name = {
        Path(r.paths[0]).parent.name if r.format == "dicom" else Path(r.paths[0]).name: r for r in records
    }
    assert by_name["pydicom_ct_small"].modality == "CT"
    assert by_name["pydicom_mr_small"].shape == (64, 64, 1)  # a single 2D image is a volume of one slice
    assert by_name["nibabel_example4d.nii.gz"].shape == (128, 96, 24)  # the first frame of the 4D series
    assert by_name["nibabel_anatomical.nii"].shape == (33, 41, 25)


def test_the_scans_read_and_are_no_duplicates(built):
    _, records = built
    digests = set()
    for record in records:
        volume = load_item(record)
        array = np.asarray(volume.array)
        assert np.isfinite(array).all() and array.std() > 0
        digests.add(hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest())
    assert len(digests) == len(records)


def test_the_script_builds_and_prepares(tmp_path, monkeypatch):
    if MISSING:
        pytest.skip(f"package test data not installed: {', '.join(MISSING)}")
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import unlike_scans

    assert unlike_scans.main([str(tmp_path / "u")]) == 0
    records = read_manifest(tmp_path / "u" / "manifest.jsonl")
    assert len(records) == len(SCANS) and all(r.ok for r in records)


def test_building_needs_no_network(tmp_path, monkeypatch):
    if MISSING:
        pytest.skip(f"package test data not installed: {', '.join(MISSING)}")

    def refuse(*args, **kwargs):
        raise AssertionError("build_unlike_archive tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    archive = build_unlike_archive(tmp_path)
    assert len(archive.written) == len(SCANS)


def test_the_validation_set_is_disjoint_and_prepares_ok(tmp_path, monkeypatch):
    """Three other scans (a PAR/REC phantom, an EPI frame, a MINC volume) for choosing settings on unlike data
    without touching the reported five: converted offline to NIfTI with their geometry, all prepared ok."""
    from medrecon.evaluate.unlike import VALIDATION_SCANS

    if any(source_path(s) is None for s in VALIDATION_SCANS):
        pytest.skip("nibabel's test data not installed")
    assert not {s.source for s in VALIDATION_SCANS} & {s.source for s in SCANS}
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import unlike_scans

    assert unlike_scans.main([str(tmp_path / "v"), "--set", "validation"]) == 0
    records = read_manifest(tmp_path / "v" / "manifest.jsonl")
    assert len(records) == len(VALIDATION_SCANS) and all(r.ok for r in records)
    shapes = sorted(tuple(r.shape) for r in records)
    assert shapes == [(17, 21, 3), (18, 28, 29), (64, 64, 9)]
    assert "phantom_EPI_asc_CLEAR_2_1.PAR" in (tmp_path / "v" / "SOURCES.md").read_text()
