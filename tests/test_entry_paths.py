"""One verdict for every entry path: prepare, reconstruct (folder, one file, manifest) and evaluate refuse the
same input with the same reason code; a single 2D image is a volume of one slice in every command."""

from __future__ import annotations

import json
import math

import h5py
import nibabel as nib
import numpy as np
import pytest
import synth_dicom as sd
import test_io_nifti as tn
import test_reconstruct as tr

from medrecon.cli import run_command
from medrecon.io.archive import load_item
from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.manifest import read_manifest, write_manifest
from medrecon.recon.ledger import read_records
from medrecon.volume import Volume

SPACING = np.diag([0.9, 0.8, 3.0, 1.0])
ZERO_FOV_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
 <encodedSpace><matrixSize><x>16</x><y>12</y><z>1</z></matrixSize>
  <fieldOfView_mm><x>0</x><y>18.0</y><z>3.0</z></fieldOfView_mm></encodedSpace>
</encoding></ismrmrdHeader>"""


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.float32)
    arr[2:-2, 2:-2] = 100 + 50 * rng.random((shape[0] - 4, shape[1] - 4, *shape[2:]))
    return arr


def _all_test(root, manifest):
    args = [f"input={root}", f"manifest={manifest}", "split.train=0", "split.val=0", "split.test=1"]
    assert run_command("prepare", args) == 0
    return {r.paths[0].relative_to(root).parts[0]: r for r in read_manifest(manifest)}


def _reconstruct(tmp_path, name, source, *overrides):
    out = tmp_path / name
    code = tr.reconstruct(f"input={source}", f"out={out}", *overrides)
    return code, out, {r.id: r for r in read_records(out / "run.jsonl")}


def _evaluate(tmp_path, name, manifest, *overrides):
    out = tmp_path / name
    code = run_command("evaluate", [f"manifest={manifest}", f"out={out}", "figures.volumes=0", *overrides])
    return code, json.loads((out / "report.json").read_text())


# -------------------------------------------------------------------------------- conflicting duplicates
def _conflicting_series(folder, kind):
    """Two different images at every position of one series, in one folder."""
    if kind == "headers":  # a dynamic series: the headers tell the time points apart
        first = sd.write_series(
            folder, prefix="T1", edit=lambda ds, k: setattr(ds, "TemporalPositionIdentifier", 1)
        )
        second = sd.write_series(
            folder, prefix="T2", seed=1, series_uid=first.series_uid,
            edit=lambda ds, k: setattr(ds, "TemporalPositionIdentifier", 2),
        )  # fmt: skip
    else:  # same size, no distinguishing tag: only the pixels differ (read to tell)

        def uid(batch):  # SOPInstanceUIDs of one length, so the file sizes match
            return lambda ds, k: setattr(ds, "SOPInstanceUID", f"1.2.826.0.1.3680043.9.7.{batch}.{k}")

        first = sd.write_series(folder, prefix="A", seed=1, edit=uid(1))
        second = sd.write_series(
            folder, prefix="B", seed=2, edit=uid(2), series_uid=first.series_uid,
            study_uid=first.study_uid, frame_of_reference_uid=first.frame_of_reference_uid,
        )  # fmt: skip
    return first, second


@pytest.mark.parametrize("kind", ["headers", "pixels"])
def test_conflicting_duplicate_gets_one_verdict_everywhere(tmp_path, kind):
    root = tmp_path / "archive"
    write_nifti(Volume(_image((16, 12, 4)), SPACING, {}), root / "good.nii.gz")
    first, second = _conflicting_series(root / "series", kind)
    manifest = tmp_path / "m.jsonl"
    by_top = _all_test(root, manifest)
    bad = by_top["series"]
    assert (bad.status, bad.reason) == ("rejected", "conflicting_duplicate")
    assert by_top["good.nii.gz"].status == "ok"

    runs = {
        "folder": _reconstruct(tmp_path, "folder", root, "method=bicubic", "task=sr2x"),
        "file": _reconstruct(tmp_path, "file", second.paths[2], "method=bicubic", "task=sr2x"),
        "manifest": _reconstruct(tmp_path, "manifest", manifest, "method=bicubic", "task=sr2x"),
    }
    for name, (code, out, recs) in runs.items():
        assert code == 3, name
        failed = [r for r in recs.values() if r.status == "failed"]
        assert [(r.id, r.reason) for r in failed] == [(bad.id, "conflicting_duplicate")], name
        assert not (out / f"{bad.id}.nii.gz").exists() and not (out / "dicom" / bad.id).exists()
        for ok in (r for r in recs.values() if r.status == "ok"):  # the other items are written
            assert read_nifti(out / ok.outputs[0]).shape == (32, 24, 4)
    assert len(runs["folder"][2]) == len(runs["manifest"][2]) == 2

    code, report = _evaluate(tmp_path, "eval", manifest, "task=sr2x", "methods=[input]")
    assert code == 0 and report["items"] == 1
    assert [(e["id"], e["reason"]) for e in report["excluded"]] == [(bad.id, "conflicting_duplicate")]
    assert any("excluded" in note and "conflicting_duplicate" in note for note in report["notes"])

    # a record that claims ok (hand-written, or an older prepare) for all the files is refused on reading
    bad.status, bad.reason, bad.paths = "ok", None, sorted([*first.paths, *second.paths])
    with pytest.raises(RejectedInput) as info:
        load_item(bad)
    assert info.value.reason is Reason.CONFLICTING_DUPLICATE


# -------------------------------------------------------------------------------- degenerate geometry
def _degenerate_archive(root):
    """A good volume beside one of each degenerate grid; returns the bad ones' names."""
    write_nifti(Volume(_image((16, 12, 4)), SPACING, {}), root / "good.nii.gz")
    img = lambda affine: nib.Nifti1Image(_image((16, 12, 4), seed=1), affine)  # noqa: E731
    nib.save(img(SPACING), str(root / "singular.nii"))
    tn._edit_header(root / "singular.nii", srow_z=(2, 0.0))  # a zero column
    nib.save(img(np.diag([0.9, 1e9, 3.0, 1.0])), str(root / "huge.nii.gz"))  # a 1e9 mm voxel
    qform_only = img(SPACING)
    qform_only.set_sform(None, code=0)
    qform_only.set_qform(SPACING, code=1)
    nib.save(qform_only, str(root / "pixdim0.nii"))
    tn._edit_header(root / "pixdim0.nii", pixdim=(1, 0.0), sform_code=((), 0), qform_code=((), 1))
    nib.save(img(SPACING), str(root / "nonfinite.nii"))
    tn._edit_header(root / "nonfinite.nii", srow_y=(1, math.inf))
    sd.write_series(
        root / "dicom", shape=(16, 12, 4), edit=lambda ds, k: setattr(ds, "PixelSpacing", [0, 0.8])
    )
    with h5py.File(root / "knee.h5", "w") as f:  # an ISMRMRD header with a zero field of view
        f.create_dataset("kspace", data=np.ones((2, 16, 12), np.complex64))
        f.create_dataset("ismrmrd_header", data=ZERO_FOV_HEADER.encode())
    return ["dicom", "huge.nii.gz", "knee.h5", "nonfinite.nii", "pixdim0.nii", "singular.nii"]


def test_degenerate_geometry_gets_one_verdict_everywhere(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    names = _degenerate_archive(root)
    manifest = tmp_path / "m.jsonl"
    by_top = _all_test(root, manifest)
    bad_ids = {by_top[n].id for n in names}
    assert {(n, by_top[n].status, by_top[n].reason) for n in names} == {
        (n, "rejected", "degenerate_geometry") for n in names
    }
    assert by_top["good.nii.gz"].status == "ok"

    checkpoint = tr.make_checkpoint(tmp_path / "model.safetensors", task="sr2x")
    diffusion = ("method=diffusion", f"checkpoint={checkpoint}", "sampler.steps=1")
    for name, source, method in (
        ("folder", root, ("method=bicubic", "task=sr2x")),
        ("manifest", manifest, ("method=bicubic", "task=sr2x")),
        ("folder_diffusion", root, diffusion),  # the same verdict whatever the method
    ):
        code, out, recs = _reconstruct(tmp_path, name, source, *method)
        assert code == 3
        assert {(i, r.reason) for i, r in recs.items() if r.status == "failed"} == {
            (i, "degenerate_geometry") for i in bad_ids
        }
        assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{by_top['good.nii.gz'].id}.nii.gz"]
    for n in names:
        source = sorted((root / n).iterdir())[1] if (root / n).is_dir() else root / n  # a file of the series
        code, out, recs = _reconstruct(tmp_path, f"file_{n}", source, "method=bicubic", "task=sr2x")
        assert code == 3 and [r.reason for r in recs.values()] == ["degenerate_geometry"]
        assert not list(out.glob("*.nii.gz"))

    code, report = _evaluate(tmp_path, "eval", manifest, "task=sr2x", "methods=[input]")
    assert code == 0 and report["items"] == 1
    assert {(e["id"], e["reason"]) for e in report["excluded"]} == {
        (i, "degenerate_geometry") for i in bad_ids
    }

    # a manifest that still says ok (written before these checks: nibabel reads pixdim 0 as 1 mm) is refused
    # when the files are read, by reconstruct and evaluate alike
    records = read_manifest(manifest)
    for record in records:
        if record.id in bad_ids:
            record.status, record.reason, record.detail = "ok", None, ""
    write_manifest(manifest, records)
    code, out, recs = _reconstruct(tmp_path, "stale", manifest, "method=bicubic", "task=sr2x")
    assert code == 3 and {i: r.reason for i, r in recs.items() if r.status == "failed"} == dict.fromkeys(
        bad_ids, "degenerate_geometry"
    )
    code, report = _evaluate(tmp_path, "eval_stale", manifest, "task=sr2x", "methods=[input]")
    assert code == 3 and report["items"] == 1
    assert {(f["id"], f["reason"]) for f in report["failed"]} == {(i, "degenerate_geometry") for i in bad_ids}


# -------------------------------------------------------------------------------- single 2D images
@pytest.fixture(scope="module")
def single_slices(tmp_path_factory):
    """A 2D NIfTI (16, 12), a NIfTI (16, 12, 1) and a single-frame DICOM image (16 columns, 12 rows)."""
    base = tmp_path_factory.mktemp("single")
    root = base / "archive"
    root.mkdir()
    nib.save(nib.Nifti1Image(_image((16, 12)), SPACING), str(root / "flat.nii.gz"))
    write_nifti(Volume(_image((16, 12, 1), seed=1), SPACING, {}), root / "one.nii.gz")
    sd.write_series(root / "dcm", shape=(16, 12, 1), seed=2)
    manifest = base / "m.jsonl"
    return root, manifest, _all_test(root, manifest)


def test_single_images_are_prepared_as_one_slice_volumes(single_slices):
    _, _, by_top = single_slices
    assert {(n, r.status, tuple(r.shape)) for n, r in by_top.items()} == {
        ("flat.nii.gz", "ok", (16, 12, 1)), ("one.nii.gz", "ok", (16, 12, 1)), ("dcm", "ok", (16, 12, 1))
    }  # fmt: skip
    assert by_top["dcm"].spacing == pytest.approx((0.8, 0.9, 2.0))  # SliceThickness is the slice axis


def test_single_images_reconstruct_with_a_baseline_and_a_2d_diffusion_model(single_slices, tmp_path):
    root, manifest, by_top = single_slices
    code, out, recs = _reconstruct(tmp_path, "bicubic", root, "method=bicubic", "task=sr4x")
    assert code == 0 and sorted(r.status for r in recs.values()) == ["ok"] * 3
    for record in by_top.values():
        result = read_nifti(out / f"{record.id}.nii.gz")
        assert result.shape == (64, 48, 1) and np.all(np.isfinite(result.array))
        np.testing.assert_allclose(
            np.linalg.norm(result.affine[:3, :3], axis=0), np.asarray(record.spacing) / [4, 4, 1], rtol=1e-5
        )
    assert len(list((out / "dicom" / by_top["dcm"].id).glob("*.dcm"))) == 1
    # a tiny 2D model with 2.5D context: the one slice is its own neighbour on both sides
    ckpt = tr.make_checkpoint(tmp_path / "sr4x.safetensors", task="sr4x", context=1, perturb=True)
    code, out, recs = _reconstruct(tmp_path, "diffusion", manifest, f"checkpoint={ckpt}", "sampler.steps=2")
    assert code == 0 and len(recs) == 3
    for record in recs.values():
        result = read_nifti(out / record.outputs[0])
        assert result.shape == (64, 48, 1) and np.all(np.isfinite(result.array)) and np.ptp(result.array) > 0


def test_single_images_evaluate_and_fail_only_where_slices_are_needed(single_slices, tmp_path):
    root, manifest, by_top = single_slices
    code, report = _evaluate(tmp_path, "sr4x", manifest, "task=sr4x", "methods=[input,bicubic]")
    assert code == 0 and report["items"] == 3 and not report["failed"]
    assert np.isfinite(report["methods"]["bicubic"]["psnr"])
    # slices across axis 0 (thick slices averaged along K) and 3D models need more than one slice
    code, report = _evaluate(tmp_path, "thick", manifest, "task=thick_slices", "methods=[input]", "axis=0")
    assert code == 3 and {f["reason"] for f in report["failed"]} == {"too_few_slices"}
    assert len(report["failed"]) == 3
    split = "slice_split={axis:2,val:0.1,test:0.1,gap:1}"  # no slab of one slice can be held out
    code, report = _evaluate(tmp_path, "slabs", manifest, "task=sr4x", "methods=[input]", split)
    assert code == 3 and [f["reason"] for f in report["failed"]] == ["too_few_slices"] * 3
    code, _, recs = _reconstruct(tmp_path, "3d", root, "method=input", "task=sr4x", "task.spatial_dims=3")
    assert code == 3 and {r.reason for r in recs.values()} == {"too_few_slices"}
