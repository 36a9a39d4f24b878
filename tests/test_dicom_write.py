"""Derived DICOM series: file format, geometry from the affine, UIDs, references, quantisation, round trip."""

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import synth_dicom as sd
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage

from medrecon.io.dicom import read_dicom_series, scan_dicom
from medrecon.io.dicom_write import choose_encoding, slice_positions, write_dicom_series
from medrecon.recon.geometry import upsampled_affine
from medrecon.volume import Volume


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(spacing=(0.8, 0.9, 2.5), angles=(0.2, -0.1, 0.3), origin=(-30.5, 12.25, 40.0)):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(*angles) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _mr_volume(shape=(7, 6, 5), seed=0):
    data = np.random.default_rng(seed).uniform(-5.0, 900.0, size=shape).astype(np.float32)
    return Volume(data, _affine(), {"modality": "MR"})


def _read(paths):
    return [pydicom.dcmread(p) for p in paths]


def _roundtrip(paths):
    scan = scan_dicom(paths)
    assert not scan.file_rejects and len(scan.series) == 1 and scan.series[0].reject is None
    return read_dicom_series(scan.series[0])


def test_files_geometry_and_uids(tmp_path):
    volume = _mr_volume()
    paths = write_dicom_series(volume, tmp_path / "s")
    assert [p.name for p in paths] == [f"slice_{k:04d}.dcm" for k in range(1, 6)]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [p.name for p in paths]  # no temporaries
    datasets = _read(paths)
    expected = slice_positions(volume)
    lps = np.diag([-1.0, -1.0, 1.0])
    for k, (ds, path) in enumerate(zip(datasets, paths)):
        raw = path.read_bytes()
        assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == MRImageStorage and ds.file_meta.MediaStorageSOPClassUID == MRImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]  # MR requires value 3
        assert ds.PatientName == "" and ds.PatientID == ""
        assert (ds.Rows, ds.Columns) == (6, 7) and ds.InstanceNumber == k + 1
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        assert np.max(np.abs(position - expected[k])) < 1e-3
        assert np.max(np.abs(position - lps @ (volume.affine @ [0, 0, k, 1])[:3])) < 1e-3
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        np.testing.assert_allclose(iop[:3], lps @ volume.affine[:3, 0] / 0.8, atol=1e-9)
        np.testing.assert_allclose(iop[3:], lps @ volume.affine[:3, 1] / 0.9, atol=1e-9)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.9, 0.8])
        assert float(ds.SliceThickness) == pytest.approx(2.5) and float(
            ds.SpacingBetweenSlices
        ) == pytest.approx(2.5)
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    # no source: a new study and frame of reference
    again = _read(write_dicom_series(volume, tmp_path / "t"))
    assert again[0].StudyInstanceUID != datasets[0].StudyInstanceUID
    assert again[0].FrameOfReferenceUID != datasets[0].FrameOfReferenceUID


def test_reader_gives_back_voxels_and_affine(tmp_path):
    volume = _mr_volume()
    paths = write_dicom_series(volume, tmp_path / "s")
    back = _roundtrip(paths)
    bound = choose_encoding(volume.array).max_error
    assert bound == pytest.approx((volume.array.max() - volume.array.min()) / 130000, rel=1e-3)
    assert np.max(np.abs(back.array - volume.array)) <= bound + 1e-4
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    assert back.meta["modality"] == "MR"


def test_negative_determinant_comes_back_in_reader_order(tmp_path):
    affine = np.diag([-1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = [50.0, -20.0, 10.0]
    volume = Volume(np.random.default_rng(1).random((5, 4, 3)).astype(np.float32) * 100, affine)
    back = _roundtrip(write_dicom_series(volume, tmp_path / "s", modality="MR"))
    flipped = affine.copy()
    flipped[:3, 2] = -affine[:3, 2]
    flipped[:3, 3] = (affine @ [0, 0, 2, 1])[:3]
    np.testing.assert_allclose(back.affine, flipped, atol=1e-4)
    np.testing.assert_allclose(back.array, volume.array[:, :, ::-1], atol=1e-3)


def test_derived_series_keeps_study_and_references_source_slices(tmp_path):
    source = _roundtrip(write_dicom_series(_mr_volume(), tmp_path / "src", derived=False))
    src = source.meta["dicom"]
    recon = Volume(source.array * 0.5, source.affine.copy(), {"modality": "MR"})
    datasets = _read(write_dicom_series(recon, tmp_path / "out", source=source, series_description="recon"))
    for k, ds in enumerate(datasets):
        assert ds.StudyInstanceUID == src["study_uid"]
        assert ds.FrameOfReferenceUID == src["frame_of_reference_uid"]
        assert ds.SeriesInstanceUID != src["series_uid"]
        assert ds.SOPInstanceUID not in src["sop_instance_uids"]
        for seq in (
            ds.ReferencedImageSequence,
            ds.SourceImageSequence,
            ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence,  # Common Instance Reference
        ):
            assert len(seq) == 1 and seq[0].ReferencedSOPInstanceUID == src["sop_instance_uids"][k]
            assert seq[0].ReferencedSOPClassUID == src["sop_class_uid"]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src["series_uid"]


def test_in_plane_upsampling_still_matches_slices(tmp_path):
    source = _roundtrip(write_dicom_series(_mr_volume(), tmp_path / "src"))
    fine = source.affine.copy()
    fine[:3, :2] /= 2
    fine[:3, 3] -= (source.affine[:3, 0] + source.affine[:3, 1]) / 4  # same field of view, half-size pixels
    up = Volume(np.zeros((14, 12, 5), np.float32) + 1, fine)
    ds = _read(write_dicom_series(up, tmp_path / "up", source=source))[2]
    assert (
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.meta["dicom"]["sop_instance_uids"][2]
    )


def _refs(ds):
    return [item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence]


def test_different_slices_reference_the_source_images_they_draw_on(tmp_path):
    source = _roundtrip(write_dicom_series(_mr_volume(shape=(7, 6, 6)), tmp_path / "src"))
    uids = source.meta["dicom"]["sop_instance_uids"]
    thick = source.affine.copy()
    thick[:3, 2] *= 2
    coarse = Volume(source.array[:, :, ::2].copy(), thick)
    datasets = _read(write_dicom_series(coarse, tmp_path / "thick", source=source))
    assert len(datasets) == 3
    for k, ds in enumerate(datasets):
        assert _refs(ds) == [uids[2 * k]]  # every other source plane
        assert "ReferencedImageSequence" not in ds  # kept for a one-to-one correspondence of planes
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.meta["dicom"]["series_uid"]
        assert ds.StudyInstanceUID == source.meta["dicom"]["study_uid"]
        assert ds.Modality == "MR"  # taken from the source when the volume does not say
    # twice as many slices: the outermost lie beyond the source's end planes (one reference), the rest between two
    fine = Volume(np.repeat(source.array, 2, axis=2), upsampled_affine(source.affine, (1, 1, 2)))
    refs = [_refs(ds) for ds in _read(write_dicom_series(fine, tmp_path / "fine", source=source))]
    assert refs[0] == [uids[0]] and refs[-1] == [uids[-1]]
    assert all(r == [uids[(k - 1) // 2], uids[(k + 1) // 2]] for k, r in enumerate(refs[1:-1], start=1))


def test_integer_ct_is_lossless_int16(tmp_path):
    data = np.random.default_rng(2).integers(-1024, 3000, size=(6, 6, 3)).astype(np.float32)
    volume = Volume(data, np.diag([0.7, 0.7, 1.25, 1.0]), {"modality": "CT"})
    paths = write_dicom_series(volume, tmp_path / "ct")
    ds = pydicom.dcmread(paths[0])
    assert ds.SOPClassUID == CTImageStorage and list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.PixelRepresentation == 1 and float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
    np.testing.assert_array_equal(_roundtrip(paths).array, data)


def test_unknown_modality_is_secondary_capture(tmp_path):
    volume = Volume(np.linspace(0, 1, 48, dtype=np.float32).reshape(4, 4, 3), np.eye(4))
    paths = write_dicom_series(volume, tmp_path / "sc")
    ds = pydicom.dcmread(paths[0])
    assert (
        ds.SOPClassUID == SecondaryCaptureImageStorage and ds.Modality == "OT" and ds.ConversionType == "WSD"
    )
    assert ds.RescaleType == "US"  # SC keeps its Modality LUT, units unspecified
    assert _validate(paths)[0] == []  # warnings: the plane geometry is an extension of the SC IOD


def test_constant_volume_and_quantisation_bound():
    encoding = choose_encoding(np.full((2, 2, 2), 7.5, np.float32))
    stored = encoding.encode(np.full((2, 2), 7.5))
    np.testing.assert_allclose(stored * encoding.slope + encoding.intercept, 7.5, atol=1e-9)
    values = np.random.default_rng(3).normal(1e4, 50.0, size=1000)
    encoding = choose_encoding(values)
    error = np.abs(encoding.encode(values) * encoding.slope + encoding.intercept - values)
    assert error.max() <= encoding.max_error and encoding.max_error < 1e-5 * np.ptp(values) + 1e-9


def test_rewrite_removes_stale_slices_and_seed_fixes_uids(tmp_path):
    out = tmp_path / "s"
    write_dicom_series(_mr_volume(shape=(4, 4, 5)), out, uid_seed="x")
    first = _read(sorted(out.iterdir()))
    write_dicom_series(_mr_volume(shape=(4, 4, 3)), out, uid_seed="x")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["slice_0001.dcm", "slice_0002.dcm", "slice_0003.dcm"]
    second = _read(sorted(out.iterdir()))
    assert [d.SOPInstanceUID for d in second] == [d.SOPInstanceUID for d in first[:3]]
    assert second[0].StudyInstanceUID == first[0].StudyInstanceUID


def test_invalid_volumes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        write_dicom_series(Volume(np.full((3, 3, 2), np.nan, np.float32), np.eye(4)), tmp_path / "a")
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthogonal"):
        write_dicom_series(Volume(np.zeros((3, 3, 2), np.float32), sheared), tmp_path / "b")
    with pytest.raises(ValueError, match="3D"):
        write_dicom_series(Volume(np.zeros((3, 3, 2, 2), np.float32), np.eye(4)), tmp_path / "c")
    assert not any(tmp_path.rglob("*.dcm"))


def test_multiframe_source_references_frames(tmp_path):
    volume = _mr_volume(shape=(4, 4, 3))
    dicom = {"study_uid": "1.2.3", "frame_of_reference_uid": "1.2.4", "series_uid": "1.2.5"}
    dicom.update(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4.1", sop_instance_uids=["1.2.6"] * 3, frame_numbers=[3, 1, 2]
    )
    source = Volume(volume.array, volume.affine, {"modality": "MR", "dicom": dicom})
    datasets = _read(write_dicom_series(volume, tmp_path / "s", source=source))
    assert [int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in datasets] == [3, 1, 2]
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3"}


# ------------------------------------------------------------------------- what a PACS and validators see
IDENTITY = {
    "PatientName": "Muster^Jörg",
    "PatientID": "PID-0042",
    "PatientBirthDate": "19700101",
    "PatientSex": "M",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "StudyID": "S17",
    "AccessionNumber": "ACC-9981",
    "ReferringPhysicianName": "Ref^Doc",
    "StudyDescription": "Brain",
}


def _with_identity(ds, k):
    ds.SpecificCharacterSet = "ISO_IR 100"  # Latin-1 in the source; the derived series writes UTF-8
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value)
    ds.BodyPartExamined, ds.PatientPosition = "HEAD", "HFS"


DISTINCT = [value for value in IDENTITY.values() if len(value) >= 5]  # too long to turn up by chance


@pytest.fixture(scope="module", params=["MR", "CT"])
def scanned(request, tmp_path_factory):
    """A source series with patient and study attributes, read like reconstruct reads it."""
    folder = tmp_path_factory.mktemp(f"src_{request.param}")
    series = sd.write_series(folder, modality=request.param, edit=_with_identity)
    return series, _roundtrip(series.paths)


# an in-plane x4 super-resolution (2D task) and a through-plane x4 (thick slices: four times the slices)
OUTPUT_GRIDS = {"sr4x": (4, 4, 1), "thick_slices": (1, 1, 4)}


def _output(source, factors, seed=0):
    """A float reconstruction on the finer grid (values a model might give: not integers)."""
    shape = tuple(n * f for n, f in zip(source.shape, factors))
    data = np.random.default_rng(seed).uniform(-40.0, 900.0, size=shape).astype(np.float32)
    return Volume(data, upsampled_affine(source.affine, factors), {"modality": source.meta["modality"]})


def _validate(paths):
    """dciodvfy's ``(Error lines, Warning lines)`` for the first, a middle and the last file (skips without
    dicom3tools)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    lines = []
    for path in {paths[0], paths[len(paths) // 2], paths[-1]}:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines += (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


@pytest.mark.parametrize("grid", OUTPUT_GRIDS)
def test_dciodvfy_finds_no_errors_and_geometry_tags_agree(scanned, grid, tmp_path):
    series, source = scanned
    volume = _output(source, OUTPUT_GRIDS[grid])
    paths = write_dicom_series(volume, tmp_path / "out", source=source, source_header=series.paths[0])
    datasets = _read(paths)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    normal = np.cross(*np.array([float(v) for v in datasets[0].ImageOrientationPatient]).reshape(2, 3))
    step = np.linalg.norm(volume.affine[:3, 2])
    np.testing.assert_allclose(np.diff(positions @ normal), step, atol=1e-4)
    for ds in datasets:
        assert (ds.Columns, ds.Rows) == volume.shape[:2]
        col_mm, row_mm = np.linalg.norm(volume.affine[:3, :2], axis=0)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [row_mm, col_mm], atol=1e-6)
        assert float(ds.SliceThickness) == pytest.approx(step)
        assert float(ds.SliceLocation) == pytest.approx(float(positions[ds.InstanceNumber - 1] @ normal))
        assert ("SpacingBetweenSlices" in ds) == (ds.Modality == "MR")  # not in the CT Image IOD
        assert ds.BodyPartExamined == "HEAD" and ds.PatientPosition == "HFS"
    assert _validate(paths) == ([], [])  # no warning either, from a source with its study attributes


def test_pacs_identity_is_copied_from_the_source_by_default(scanned, tmp_path):
    series, source = scanned
    assert not any(value in str(source.meta) for value in DISTINCT)  # the Volume never carries it
    paths = write_dicom_series(
        _output(source, (4, 4, 1)), tmp_path / "out", source=source, source_header=series.paths[2]
    )
    for ds in _read(paths):
        assert {keyword: str(ds[keyword].value) for keyword in IDENTITY} == IDENTITY
        assert ds.StudyInstanceUID == series.study_uid
        assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
        assert ds.SeriesInstanceUID != series.series_uid and ds.SOPInstanceUID not in series.sop_uids
        assert ds.SpecificCharacterSet == "ISO_IR 192"  # the non-ASCII name re-encoded as UTF-8
        assert ds.DerivationDescription and ds.SourceImageSequence
    assert "Jörg".encode() in paths[0].read_bytes()
    assert paths[0].read_bytes()[:128] == bytes(128)
    assert all(p.name.startswith("slice_") for p in paths)  # names never come from tags


def test_research_export_empties_identity_and_drops_source_uids(scanned, tmp_path):
    series, source = scanned
    volume = _output(source, (1, 1, 4))
    paths = write_dicom_series(
        volume, tmp_path / "out", source=source, source_header=series.paths[0], identity="empty"
    )
    source_uids = {series.study_uid, series.series_uid, series.frame_of_reference_uid, *series.sop_uids}
    for path, ds in zip(paths, _read(paths)):
        raw = path.read_bytes()
        assert not any(value.encode("latin-1") in raw or value.encode() in raw for value in DISTINCT)
        assert not any(uid.encode() in raw for uid in source_uids)
        assert (ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.StudyDate) == ("", "", "", "")
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert ds.BodyPartExamined == "HEAD"  # anatomy, not identity
    with pytest.raises(ValueError, match="dicom_identity"):
        write_dicom_series(volume, tmp_path / "bad", source=source, identity="anonymous")
    errors, warnings = _validate(paths)
    assert errors == [] and warnings  # the warnings docs/data-formats.md lists: empty type-2 attributes
    assert all("needed to build DICOMDIR" in line for line in warnings)


def test_a_header_from_another_series_is_refused(scanned, tmp_path):
    series, source = scanned
    other = sd.write_series(tmp_path / "other", modality=source.meta["modality"], edit=_with_identity)
    with pytest.raises(ValueError, match="no longer belongs"):
        write_dicom_series(source, tmp_path / "out", source=source, source_header=other.paths[0])
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_mr_values_go_through_the_real_world_value_mapping_not_a_modality_lut(tmp_path):
    volume = _mr_volume(shape=(6, 5, 4))
    paths = write_dicom_series(volume, tmp_path / "mr")
    bound = choose_encoding(volume.array).max_error
    for k, ds in enumerate(_read(paths)):
        assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds and "ModalityLUTSequence" not in ds
        (mapping,) = ds.RealWorldValueMappingSequence
        assert (mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped) == (0, 65535)
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"  # UCUM "no units"
        stored = ds.pixel_array.astype(np.float64).T  # (rows, columns) -> (i, j)
        decoded = stored * mapping.RealWorldValueSlope + mapping.RealWorldValueIntercept
        assert np.max(np.abs(decoded - volume.array[:, :, k])) <= bound
        # the window is on stored values, which a viewer sees without a Modality LUT
        assert stored.min() <= float(ds.WindowCenter) <= stored.max()
    assert np.max(np.abs(_roundtrip(paths).array - volume.array)) <= bound + 1e-4  # medrecon's reader too
    # integer MR that fits 16 bits is stored as is, with no mapping at all
    integers = Volume(np.rint(volume.array), volume.affine, {"modality": "MR"})
    ds = pydicom.dcmread(write_dicom_series(integers, tmp_path / "int")[0])
    assert "RealWorldValueMappingSequence" not in ds and "RescaleSlope" not in ds


@pytest.mark.parametrize("integer", [True, False])
def test_ct_keeps_hounsfield_units_in_the_modality_lut(tmp_path, integer):
    data = np.random.default_rng(4).uniform(-1024.0, 2500.0, size=(6, 5, 3))
    data = (np.rint(data) if integer else data).astype(np.float32)
    volume = Volume(data, np.diag([0.7, 0.7, 1.25, 1.0]), {"modality": "CT"})
    paths = write_dicom_series(volume, tmp_path / "ct")
    for k, ds in enumerate(_read(paths)):
        assert ds.RescaleType == "HU" and "RealWorldValueMappingSequence" not in ds
        hu = ds.pixel_array.astype(np.float64).T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.max(np.abs(hu - data[:, :, k])) <= choose_encoding(data).max_error + 1e-9
    assert np.max(np.abs(_roundtrip(paths).array - data)) <= choose_encoding(data).max_error + 1e-3


def test_dcm2niix_reads_the_same_geometry_as_our_nifti(scanned, tmp_path):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed")
    import nibabel as nib

    from medrecon.io.nifti import write_nifti

    series, source = scanned
    for grid, factors in OUTPUT_GRIDS.items():
        volume = _output(source, factors)
        write_nifti(volume, tmp_path / f"{grid}.nii.gz")
        write_dicom_series(volume, tmp_path / grid, source=source, source_header=series.paths[0])
        converted = tmp_path / f"{grid}_dcm2niix"
        converted.mkdir()
        run = subprocess.run(
            ["dcm2niix", "-z", "n", "-b", "n", "-f", "out", "-o", str(converted), str(tmp_path / grid)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout[-500:]
        (theirs,) = converted.glob("*.nii")
        theirs = nib.as_closest_canonical(nib.load(theirs))
        ours = nib.as_closest_canonical(nib.load(tmp_path / f"{grid}.nii.gz"))
        assert theirs.shape == ours.shape == volume.shape
        np.testing.assert_allclose(theirs.affine, ours.affine, atol=1e-3)
        # same voxels in the same places: CT through the rescale in HU, MR as stored values (dcm2niix does
        # not apply a Real World Value Mapping), a linear function of ours
        a, b = np.asarray(theirs.dataobj, np.float64).ravel(), np.asarray(ours.dataobj, np.float64).ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.99999
