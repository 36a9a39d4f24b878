"""Derived DICOM series: file format, geometry from the affine, UIDs, references, quantisation, round trip."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage

from medrecon.io.dicom import read_dicom_series, scan_dicom
from medrecon.io.dicom_write import choose_encoding, slice_positions, write_dicom_series
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
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
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
        for seq in (ds.ReferencedImageSequence, ds.SourceImageSequence):
            assert seq[0].ReferencedSOPInstanceUID == src["sop_instance_uids"][k]
            assert seq[0].ReferencedSOPClassUID == src["sop_class_uid"]
        assert "ReferencedSeriesSequence" not in ds


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


def test_different_slices_reference_the_series(tmp_path):
    source = _roundtrip(write_dicom_series(_mr_volume(shape=(7, 6, 6)), tmp_path / "src"))
    thick = source.affine.copy()
    thick[:3, 2] *= 2
    coarse = Volume(source.array[:, :, ::2].copy(), thick)
    datasets = _read(write_dicom_series(coarse, tmp_path / "thick", source=source))
    assert len(datasets) == 3
    for ds in datasets:
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.meta["dicom"]["series_uid"]
        assert "ReferencedImageSequence" not in ds and "SourceImageSequence" not in ds
        assert ds.StudyInstanceUID == source.meta["dicom"]["study_uid"]
        assert ds.Modality == "MR"  # taken from the source when the volume does not say


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
    ds = pydicom.dcmread(write_dicom_series(volume, tmp_path / "sc")[0])
    assert (
        ds.SOPClassUID == SecondaryCaptureImageStorage and ds.Modality == "OT" and ds.ConversionType == "WSD"
    )


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
