"""`medrecon reconstruct` on CPU: good and hostile inputs, resume, DICOM output, no patient data."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pydicom
import pytest
import synth_dicom as sd
import torch
from omegaconf import OmegaConf

from medrecon.checkpoint import ModelSpec, save_checkpoint
from medrecon.cli import run_command
from medrecon.data.encoder import Encoder
from medrecon.distributed import DistEnv
from medrecon.io.dicom import read_dicom_series, scan_dicom
from medrecon.io.nifti import read_nifti, write_nifti
from medrecon.physics.base import Measurement, OperatorParams
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.registry import task_config
from medrecon.recon import run as recon_run
from medrecon.recon import sharding
from medrecon.recon.engine import Engine, Job
from medrecon.recon.geometry import bounding_box, upsampled_affine
from medrecon.recon.ledger import RunLedger, RunRecord, read_records
from medrecon.recon.outputs import item_outputs
from medrecon.volume import Volume

PHI = ("Doe^Jane", "Doe", "Jane", "12345678")
AFFINE = np.array(
    [[1.2, 0.1, 0.0, -10.0], [-0.1, 1.5, 0.2, 5.0], [0.0, -0.1, 3.0, 20.0], [0.0, 0.0, 0.0, 1.0]]
)


def _phi(ds, k):
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345678"


def _mr_array(shape=(16, 12, 4), seed=0):
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.float32)
    arr[2:-2, 2:-2] = 100 + 50 * rng.random((shape[0] - 4, shape[1] - 4, shape[2]))
    return arr


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two good items (a NIfTI volume, a DICOM series with names in it) and three hostile ones."""
    root = tmp_path_factory.mktemp("archive")
    write_nifti(Volume(_mr_array(), AFFINE, {}), root / "good.nii.gz")
    series = sd.write_series(root / "series", shape=(16, 12, 4), edit=_phi)
    sd.write_not_dicom(root / "junk.dcm")
    write_nifti(Volume(_mr_array(seed=1), AFFINE, {}), root / "cut.nii.gz")
    sd.truncate(root / "cut.nii.gz", 200)
    sd.write_series(root / "gap", shape=(16, 12, 5), offsets=[0.0, 2.0, 4.0, 8.0, 10.0], edit=_phi)
    return root, series


def make_checkpoint(path, task="sr2x", context=0, config=None, perturb=False):
    """A random-weight tiny U-Net checkpoint for ``task`` (cheap on CPU). The U-Net's output layers start at
    zero; ``perturb`` adds noise to every weight so that the network's output is not zero."""
    cfg = task_config(task)
    cond = (2 if task.startswith("mri") else 1) * (2 * context + 1)
    spec = ModelSpec(
        model={"_target_": "medrecon.nn.unet.UNet", "channels": [8, 16], "num_res_blocks": 1,
               "attention_levels": [False, False], "num_heads": 2, "dropout": 0.0},
        task=cfg, spatial_dims=2, image_channels=1, cond_channels=cond, context=context,
    )  # fmt: skip
    torch.manual_seed(0)
    precond = spec.build_precond()
    if perturb:
        with torch.no_grad():
            for param in precond.parameters():
                param.add_(0.2 * torch.randn_like(param))
    config = OmegaConf.create(config or {"data": {"axis": 2, "slice_split": None}})
    return save_checkpoint(path, raw=precond, ema=None, spec=spec, encoder=Encoder(), config=config, step=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def reconstruct(*overrides):
    return run_command("reconstruct", ["progress=false", *[str(o) for o in overrides]])


def records(out):
    return {r.id: r for r in read_records(out / "run.jsonl")}


def by_input(recs, name):
    return next(r for r in recs.values() if any(name in p for p in r.input))


# ------------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("factors", [(2, 2, 1), (4, 4, 1), (1, 3, 2)])
def test_upsampled_affine_keeps_the_bounding_box_and_tiles_voxels(factors):
    shape = (5, 4, 3)
    new = upsampled_affine(AFFINE, factors)
    new_shape = tuple(n * f for n, f in zip(shape, factors))
    np.testing.assert_allclose(bounding_box(new, new_shape), bounding_box(AFFINE, shape), atol=1e-9)
    np.testing.assert_allclose(
        np.linalg.norm(new[:3, :3], axis=0), np.linalg.norm(AFFINE[:3, :3], axis=0) / factors
    )
    # the centres of the f fine voxels of coarse voxel 0 average to the coarse centre
    fine = np.array(
        [[i, j, k, 1.0] for i in range(factors[0]) for j in range(factors[1]) for k in range(factors[2])]
    )
    np.testing.assert_allclose((new @ fine.T).T.mean(0), AFFINE[:, 3], atol=1e-9)


# ------------------------------------------------------------------------------------------------ baselines
@pytest.fixture(scope="module")
def baseline_run(archive, tmp_path_factory):
    root, series = archive
    out = tmp_path_factory.mktemp("out_input")
    code = reconstruct(f"input={root}", f"out={out}", "method=input", "task=sr2x")
    return out, code


def test_partial_failure_exit_code_reasons_and_outputs(baseline_run, archive):
    out, code = baseline_run
    root, series = archive
    assert code == 3
    recs = records(out)
    assert len(recs) == 5
    assert sorted(r.status for r in recs.values()) == ["failed", "failed", "failed", "ok", "ok"]
    assert by_input(recs, "junk.dcm").reason == "not_dicom"
    assert by_input(recs, "cut.nii.gz").reason == "truncated_file"
    assert by_input(recs, "gap").reason == "missing_slice"
    assert all(r.detail for r in recs.values() if r.status == "failed")
    good = by_input(recs, "good.nii.gz")
    assert good.outputs == [f"{good.id}.nii.gz"] and good.seconds >= 0
    result = read_nifti(out / f"{good.id}.nii.gz")
    assert result.array.dtype == np.float32 and result.shape == (32, 24, 4)
    np.testing.assert_allclose(result.affine, upsampled_affine(AFFINE, (2, 2, 1)), atol=1e-5)
    # the input baseline is nearest-neighbour upsampling: its 2x2 blocks hold the input voxels (scanner units),
    # within the encoder's percentile range (encoder.clip=true, as evaluate and every trained model encode)
    low, high = np.percentile(_mr_array(), [0.5, 99.5])
    np.testing.assert_allclose(result.array[::2, ::2], np.clip(_mr_array(), low, high), rtol=1e-5, atol=1e-3)
    dicom = by_input(recs, "series")
    assert dicom.outputs == [f"{dicom.id}.nii.gz", f"dicom/{dicom.id}"]
    assert len(list((out / "dicom" / dicom.id).glob("*.dcm"))) == 4


def test_rerun_skips_finished_items_without_rewriting(baseline_run, archive):
    out, _ = baseline_run
    root, _ = archive
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".gz", ".dcm")}
    assert reconstruct(f"input={root}", f"out={out}", "method=input", "task=sr2x") == 3
    recs = records(out)
    assert len(read_records(out / "run.jsonl")) == 5  # one record per item after the rewrite
    assert sorted(r.status for r in recs.values()) == ["failed", "failed", "failed", "skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # other settings (a different baseline) redo the items
    assert reconstruct(f"input={root}", f"out={out}", "method=bicubic", "task=sr2x") == 3
    assert sorted(r.status for r in records(out).values()) == ["failed", "failed", "failed", "ok", "ok"]


def test_derived_dicom_series(baseline_run, archive):
    out, _ = baseline_run
    _, series = archive
    rec = by_input(records(out), "series")
    files = sorted((out / "dicom" / rec.id).glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    volume = read_nifti(out / f"{rec.id}.nii.gz")
    for k, ds in enumerate(datasets):
        assert ds.SeriesInstanceUID != series.series_uid and ds.SOPInstanceUID not in series.sop_uids
        assert ds.StudyInstanceUID == series.study_uid
        assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == series.sop_uids[k]
        ras = volume.affine @ np.array([0.0, 0.0, k, 1.0])
        lps = np.array([-ras[0], -ras[1], ras[2]])
        assert np.max(np.abs(np.array([float(v) for v in ds.ImagePositionPatient]) - lps)) < 1e-3
        # dicom_identity=source (default): a PACS files the series under the source's patient
        assert (str(ds.PatientName), ds.PatientID) == ("Doe^Jane", "12345678")
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    scan = scan_dicom(files)
    back = read_dicom_series(scan.series[0])
    assert back.shape == volume.shape
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-3)
    np.testing.assert_allclose(back.array, volume.array, atol=1e-2 * float(np.abs(volume.array).max()))


def test_no_patient_identifiers_in_names_logs_or_records(baseline_run):
    out, _ = baseline_run
    for path in out.rglob("*"):
        assert not any(word in path.name for word in PHI)
        if path.is_file() and path.suffix in (".log", ".jsonl", ".yaml", ".json"):
            text = path.read_text()
            assert not any(word in text for word in PHI), path.name


def test_dicom_identity_empty_is_a_research_export(archive, tmp_path):
    root, series = archive
    common = [f"input={series.folder}", "method=input", "task=sr2x"]
    assert reconstruct(*common, f"out={tmp_path / 'out'}", "dicom_identity=empty") == 0
    (rec,) = records(tmp_path / "out").values()
    files = sorted((tmp_path / "out" / "dicom" / rec.id).glob("*.dcm"))
    assert len(files) == 4
    for path in files:
        assert not any(word.encode() in path.read_bytes() for word in PHI)
        ds = pydicom.dcmread(path)
        assert (ds.PatientName, ds.PatientID, ds.AccessionNumber) == ("", "", "")
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID != series.study_uid
        assert ds.FrameOfReferenceUID != series.frame_of_reference_uid
        assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    assert reconstruct(*common, f"out={tmp_path / 'default'}") == 0
    assert records(tmp_path / "default")[rec.id].settings != rec.settings  # part of the resume key
    assert reconstruct(*common, f"out={tmp_path / 'bad'}", "dicom_identity=anon") == 2


def test_kill_and_resume(archive, tmp_path, monkeypatch):
    root, _ = archive
    out = tmp_path / "out"
    real = recon_run.write_outputs
    calls = []

    def dies_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(recon_run, "write_outputs", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(f"input={root}", f"out={out}", "method=input", "task=sr2x")
    first = records(out)
    assert [r.status for r in first.values()].count("ok") == 1  # finished before the kill: kept
    monkeypatch.setattr(recon_run, "write_outputs", real)
    assert reconstruct(f"input={root}", f"out={out}", "method=input", "task=sr2x") == 3
    after = records(out)
    assert sorted(r.status for r in after.values()) == ["failed", "failed", "failed", "ok", "skipped"]
    # lost outputs are redone even though the record says ok
    done = next(r for r in after.values() if r.status in ("ok", "skipped"))
    (out / done.outputs[0]).unlink()
    assert reconstruct(f"input={root}", f"out={out}", "method=input", "task=sr2x") == 3
    assert records(out)[done.id].status == "ok" and (out / done.outputs[0]).is_file()


def test_one_dicom_file_names_its_series(archive, tmp_path):
    root, series = archive
    out = tmp_path / "out"
    assert reconstruct(f"input={series.paths[2]}", f"out={out}", "method=input", "task=sr2x") == 0
    (rec,) = records(out).values()
    assert sorted(rec.input) == sorted(str(p) for p in series.paths)
    assert read_nifti(out / f"{rec.id}.nii.gz").shape == (32, 24, 4)


def test_usage_errors_exit_2(archive, tmp_path, checkpoint):
    root, _ = archive
    assert reconstruct(f"input={root}", f"out={tmp_path}/a", "method=diffusion") == 2  # no checkpoint
    assert reconstruct(f"input={root}", f"out={tmp_path}/b", "method=tv") == 2  # baseline without task
    assert reconstruct(f"input={root}", f"out={tmp_path}/c", "method=magic", "task=sr2x") == 2
    assert reconstruct(f"input={tmp_path}/missing", f"out={tmp_path}/d", "method=tv", "task=sr2x") == 2
    assert reconstruct(f"input={root}", f"out={tmp_path}/e", "method=nlm", "task=sr2x") == 2  # not applicable
    assert reconstruct(f"input={root}", f"out={tmp_path}/f", f"checkpoint={checkpoint}", "task=sr4x") == 2
    assert (
        reconstruct(f"input={root}", f"out={tmp_path}/g", f"checkpoint={checkpoint}", "precision=fp16") == 2
    )
    assert reconstruct(f"input={root}", f"out={tmp_path}/h", f"checkpoint={checkpoint}", "compile=maybe") == 2


# ------------------------------------------------------------------------------------------------ diffusion
def test_diffusion_single_file_with_uncertainty_independent_of_batch(archive, checkpoint, tmp_path):
    root, _ = archive
    runs = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        args = [f"input={root / 'good.nii.gz'}", f"out={out}", f"checkpoint={checkpoint}", "sampler=ddim"]
        assert reconstruct(*args, "sampler.steps=2", "samples=2", f"batch_size={batch}") == 0
        (rec,) = records(out).values()
        assert rec.status == "ok" and rec.outputs == [f"{rec.id}.nii.gz", f"{rec.id}_std.nii.gz"]
        runs[batch] = (read_nifti(out / rec.outputs[0]), read_nifti(out / rec.outputs[1]))
    mean, std = runs[1]
    assert mean.shape == std.shape == (32, 24, 4)
    np.testing.assert_allclose(mean.affine, upsampled_affine(AFFINE, (2, 2, 1)), atol=1e-5)
    assert np.all(std.array >= 0) and std.array.max() > 0
    np.testing.assert_allclose(runs[3][0].array, mean.array, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(runs[3][1].array, std.array, rtol=1e-4, atol=1e-2)


def test_bf16_network_precision_is_close_to_fp32_and_changes_the_settings(archive, tmp_path):
    """precision=bf16 runs the network under bf16 autocast (here on the CPU); the sampler and the data
    consistency stay float32, so the result differs from fp32 by bf16 rounding only. A finished fp32 item is
    redone, not skipped, when the precision changes."""
    root, _ = archive
    out = tmp_path / "run"
    checkpoint = make_checkpoint(tmp_path / "busy.safetensors", perturb=True)
    args = [f"input={root / 'good.nii.gz'}", f"out={out}", f"checkpoint={checkpoint}", "sampler.steps=3"]
    arrays = {}
    for precision in ("fp32", "bf16"):
        assert reconstruct(*args, f"precision={precision}") == 0
        (rec,) = records(out).values()
        assert rec.status == "ok"
        arrays[precision] = read_nifti(out / rec.outputs[0]).array
    diff = np.abs(arrays["bf16"] - arrays["fp32"])
    assert 0 < diff.max() and diff.mean() < 0.02 * np.ptp(arrays["fp32"])


def test_diffusion_with_context_from_a_manifest(archive, tmp_path):
    root, _ = archive
    ckpt = make_checkpoint(tmp_path / "ctx.safetensors", task="denoise", context=1)
    manifest = tmp_path / "m.jsonl"
    assert run_command("prepare", [f"input={root}", f"manifest={manifest}"]) == 0
    out = tmp_path / "out"
    assert reconstruct(f"input={manifest}", f"out={out}", f"checkpoint={ckpt}", "sampler.steps=2") == 3
    recs = records(out)
    ok = [r for r in recs.values() if r.status == "ok"]
    assert len(ok) == 2 and {r.reason for r in recs.values() if r.status == "failed"} == {
        "not_dicom", "truncated_file", "missing_slice"}  # fmt: skip
    assert read_nifti(out / by_input(recs, "good.nii.gz").outputs[0]).shape == (16, 12, 4)


def test_mri_kspace_input_zero_filled(tmp_path):
    """fastMRI k-space: the encoded measurement decodes back to the file's zero-filled image exactly."""
    rng = np.random.default_rng(0)
    image = np.zeros((3, 16, 12), np.float32)
    image[:, 3:13, 2:10] = 1 + rng.random((3, 10, 8))
    kspace = fft2c(torch.from_numpy(image).to(torch.complex64), (-2, -1)).numpy()
    mask = np.zeros(12, np.float32)
    mask[[0, 4, 5, 6, 7, 10]] = 1
    with h5py.File(tmp_path / "knee.h5", "w") as f:
        f.create_dataset("kspace", data=kspace * mask)
        f.create_dataset("mask", data=mask)
    out = tmp_path / "out"
    assert (
        reconstruct(f"input={tmp_path / 'knee.h5'}", f"out={out}", "method=zero_filled", "task=mri_r4") == 0
    )
    (rec,) = records(out).values()
    result = read_nifti(out / rec.outputs[0])
    expected = ifft2c(torch.from_numpy(kspace * mask), (-2, -1)).real.numpy()  # (slices, H, W)
    assert result.shape == (12, 16, 3)  # (W, H, slices) like kspace_volume
    np.testing.assert_allclose(result.array, expected.transpose(2, 1, 0), atol=1e-4)
    # an image is no k-space: an MRI task refuses it with a reason
    write_nifti(Volume(image.transpose(2, 1, 0).copy(), np.eye(4), {}), tmp_path / "img.nii.gz")
    assert (
        reconstruct(f"input={tmp_path / 'img.nii.gz'}", f"out={tmp_path}/o2", "method=tv", "task=mri_r4") == 3
    )
    assert next(iter(records(tmp_path / "o2").values())).reason == "unsupported"


# ------------------------------------------------------------------------------------------------ plumbing
def test_ranks_split_items_and_rank0_merges(archive, tmp_path, monkeypatch):
    root, _ = archive
    ids = [f"s-{i:04d}" for i in range(7)]
    shares = [sharding.select_ids(ids, DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert set().union(*shares) == set(ids) and sum(len(s) for s in shares) == 7
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    monkeypatch.setattr(sharding, "start", lambda env: False)
    monkeypatch.setattr(sharding, "barrier", lambda env: None)
    out = tmp_path / "out"
    for rank in (1, 0):  # rank 1 finishes first; rank 0 merges after the barrier
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        reconstruct(f"input={root}", f"out={out}", "method=input", "task=sr2x")
    merged = read_records(out / "run.jsonl")
    assert len(merged) == 5 and len({r.id for r in merged}) == 5
    assert not list(out.glob("run.rank*.jsonl"))


def test_ledger_ignores_a_torn_line_and_merges(tmp_path):
    ledger = RunLedger(tmp_path)
    ledger.append(RunRecord(id="s-1", input=["a"], status="ok", outputs=["s-1.nii.gz"]))
    with open(tmp_path / "run.jsonl", "a") as fh:
        fh.write('{"id": "s-2", "inp')  # killed mid-write
    assert [r.id for r in read_records(tmp_path / "run.jsonl")] == ["s-1"]
    ledger.append(RunRecord(id="s-1", input=["a"], status="failed", reason="error"))
    merged = ledger.finalize(["s-1"])
    assert [(r.id, r.status) for r in merged] == [("s-1", "failed")]
    assert json.loads((tmp_path / "run.jsonl").read_text())["status"] == "failed"


def test_output_paths_stay_inside_out(tmp_path):
    paths = item_outputs(tmp_path, "s-0123abcd")
    assert paths.nifti.parent == tmp_path.resolve() and paths.dicom.parent.parent == tmp_path.resolve()
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 200, "Doe^Jane"):
        with pytest.raises(ValueError):
            item_outputs(tmp_path, bad)
    os.symlink(tmp_path.parent, tmp_path / "dicom")  # a planted link may not lead the writes outside
    with pytest.raises(ValueError, match="outside"):
        item_outputs(tmp_path, "s-1")


def _job(key, n, fail_seed=None):
    y = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    meas = Measurement(y, OperatorParams(), torch.zeros(n))
    return Job(key=key, method="m", meas=meas, seeds=[fail_seed if i == 1 else i for i in range(n)])


def test_engine_halves_batches_on_out_of_memory_and_isolates_failures():
    sizes, done, failed = [], {}, {}

    def method(meas, cond, seeds):
        sizes.append(meas.y.shape[0])
        if meas.y.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        if -1 in seeds:
            raise RuntimeError("bad slice")
        return meas.y * 2, None

    engine = Engine({"m": method}, 8, torch.device("cpu"), lambda j, m, s: done.update({j.key: m}),
                    lambda j, r, d: failed.update({j.key: (r, d)}))  # fmt: skip
    engine.submit(_job("a", 3))
    engine.submit(_job("b", 3, fail_seed=-1))
    engine.submit(_job("c", 2))
    engine.flush()
    assert sorted(done) == ["a", "c"] and failed == {"b": ("error", "RuntimeError: bad slice")}
    assert sizes[0] == 8 and engine.batch_size <= 2
    np.testing.assert_allclose(done["a"][:, 0, 0, 0].numpy(), [0, 2, 4])


@pytest.mark.gpu
def test_cuda_matches_cpu(archive, checkpoint, tmp_path):
    root, _ = archive
    results = []
    for device, precision in (("cpu", "auto"), ("cuda", "fp32"), ("cuda", "auto")):
        out = tmp_path / f"{device}_{precision}"
        args = [f"input={root / 'good.nii.gz'}", f"out={out}", f"checkpoint={checkpoint}", "sampler.steps=2"]
        assert reconstruct(*args, f"device={device}", f"precision={precision}", "samples=2") == 0
        (rec,) = records(out).values()
        results.append(read_nifti(out / rec.outputs[0]).array)
    # same seeds, same noise (drawn on CPU generators); only float rounding (TF32 convolutions) may differ
    assert np.abs(results[1] - results[0]).mean() < 0.01 * np.ptp(results[0])
    # CUDA's default (auto) is bf16 autocast for the network: bf16 rounding on top
    assert np.abs(results[2] - results[0]).mean() < 0.02 * np.ptp(results[0])


@pytest.mark.gpu
def test_cuda_compiled_network_matches_eager(archive, tmp_path):
    """compile=true (torch.compile of the network) gives the eager result up to kernel rounding."""
    root, _ = archive
    checkpoint = make_checkpoint(tmp_path / "busy.safetensors", perturb=True)
    results = []
    for flag in ("false", "true"):
        out = tmp_path / f"compile_{flag}"
        args = [f"input={root / 'good.nii.gz'}", f"out={out}", f"checkpoint={checkpoint}", "sampler.steps=3"]
        assert reconstruct(*args, "device=cuda", "precision=fp32", f"compile={flag}") == 0
        (rec,) = records(out).values()
        results.append(read_nifti(out / rec.outputs[0]).array)
    assert np.abs(results[1] - results[0]).mean() < 0.01 * np.ptp(results[0])


def test_a_source_header_unreadable_at_write_time_fails_the_item_and_leaves_no_output(tmp_path):
    """A damaged element the reader never needs (here PatientName's VR) surfaces when the derived DICOM copies
    the patient attributes: the item fails as ``unreadable`` and its NIfTI, written first, is removed."""
    series = sd.write_series(tmp_path / "in" / "series", shape=(16, 12, 4))
    for path in series.paths:  # explicit VR little endian: (0010,0010) "PN" -> an unknown VR "Pn"
        data = path.read_bytes()
        path.write_bytes(data.replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00Pn", 1))
    out = tmp_path / "out"
    assert reconstruct(f"input={tmp_path / 'in'}", f"out={out}", "method=input", "task=sr2x") == 3
    (rec,) = records(out).values()
    assert (rec.status, rec.reason, rec.outputs) == ("failed", "unreadable", [])
    assert "cannot be read again" in rec.detail
    assert not list(out.glob("*.nii.gz")) and not list((out / "dicom").glob("*"))
