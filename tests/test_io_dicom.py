"""DICOM series reader: grouping, order, geometry, rescale, enhanced multi-frame, codecs, every rejection."""

from __future__ import annotations

import logging
import math
import shutil
import struct
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import synth_dicom as sd
from pydicom.pixels import get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)

from medrecon.io import dicom_geometry as geo
from medrecon.io.dicom import (
    DicomScan,
    DicomSeries,
    read_dicom_dir,
    read_dicom_series,
    scan_dicom,
)
from medrecon.io.dicom_header import CODECS_HINT
from medrecon.io.errors import Reason, RejectedInput


def only_series(scan: DicomScan) -> DicomSeries:
    assert len(scan.series) == 1, [(s.key[:8], s.reject) for s in scan.series]
    return scan.series[0]


def reason_of(scan: DicomScan) -> Reason:
    series = only_series(scan)
    assert series.reject is not None
    return series.reject.reason


def read_raises(series: DicomSeries, reason: Reason) -> RejectedInput:
    with pytest.raises(RejectedInput) as info:
        read_dicom_series(series)
    assert info.value.reason is reason
    return info.value


# ------------------------------------------------------------------------------------------- reading ok data


def test_clean_series_reads_voxels_affine_and_uid_only_meta(tmp_path):
    synth = sd.write_series(tmp_path, modality="CT")
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None and not series.multiframe and series.dropped_duplicates == []
    assert series.paths == synth.paths
    assert series.modality == "CT"
    assert series.shape == (8, 10, 5)
    np.testing.assert_allclose(series.spacing, (0.8, 0.9, 2.0), atol=1e-9)
    assert len(series.key) == 64 and int(series.key, 16) >= 0

    volume = read_dicom_series(series)
    assert volume.array.dtype == np.float32 and volume.shape == (8, 10, 5)
    np.testing.assert_array_equal(volume.array, synth.expected)
    assert volume.array.min() < 0  # CT intercept -1024 applied
    np.testing.assert_allclose(volume.affine, synth.affine, atol=1e-9)
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-12)
    dicom_meta = volume.meta["dicom"]
    assert volume.meta["modality"] == "CT" and volume.meta["source_format"] == "dicom"
    assert dicom_meta["sop_instance_uids"] == synth.sop_uids
    assert dicom_meta["series_uid"] == synth.series_uid and dicom_meta["study_uid"] == synth.study_uid
    assert dicom_meta["frame_of_reference_uid"] == synth.frame_of_reference_uid
    assert dicom_meta["sop_class_uid"] == str(pydicom.uid.CTImageStorage)
    np.testing.assert_allclose(volume.meta["spacing"], (0.8, 0.9, 2.0), atol=1e-9)
    assert "Synthetic" not in repr(volume.meta) and "SYNTH0001" not in repr(volume.meta)


def test_shuffled_names_and_reversed_instance_numbers_change_nothing(tmp_path):
    clean = sd.write_series(tmp_path / "clean", iop=sd.oblique_iop(), seed=3)
    messy = sd.write_series(
        tmp_path / "messy",
        iop=sd.oblique_iop(),
        seed=3,
        shuffle_names=True,
        instance_numbers="reversed",
    )
    assert sorted(messy.paths) != messy.paths  # names really disagree with slice order
    a = read_dicom_series(only_series(scan_dicom([clean.folder])))
    series = only_series(scan_dicom([messy.folder]))
    b = read_dicom_series(series)
    assert series.paths == messy.paths
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_shuffled_instance_numbers_and_descending_positions_sort_along_normal(tmp_path):
    # slices written from the top down: slice order must still ascend along the normal
    synth = sd.write_series(tmp_path, offsets=[8.0, 6.0, 4.0, 2.0, 0.0], instance_numbers="shuffled")
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    assert volume.affine[2, 2] > 0  # axial: normal is +z (superior) in LPS and RAS
    np.testing.assert_array_equal(volume.array, synth.expected[:, :, ::-1])
    np.testing.assert_allclose(volume.affine[:3, 3], [20.0, 30.0, 10.0])


def test_per_slice_rescale_gives_physical_values(tmp_path):
    slopes = [0.5, 1.0, 2.0, 3.25, 4.0]
    intercepts = [-10.0, 0.0, 5.5, -1024.0, 100.0]
    synth = sd.write_series(tmp_path, modality="CT", slopes=slopes, intercepts=intercepts)
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    for k in range(5):
        expected = synth.stored[k].T.astype(np.float64) * slopes[k] + intercepts[k]
        np.testing.assert_allclose(volume.array[:, :, k], expected, rtol=1e-6)
    i, j, k = 3, 7, 2
    assert volume.array[i, j, k] == np.float32(synth.stored[k, j, i] * 2.0 + 5.5)


def _rwv(slope, intercept, label="RWV"):
    item = pydicom.Dataset()
    item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 65535
    item.RealWorldValueSlope, item.RealWorldValueIntercept = slope, intercept
    item.LUTLabel, item.LUTExplanation = label, "test"
    return item


@pytest.mark.parametrize(
    ("mappings", "rescale", "expected"),
    [
        ([(0.25, -3.0)], False, (0.25, -3.0)),  # an MR image without a Modality LUT: the mapping applies
        ([(0.25, -3.0), (2.0, 0.0)], False, (1.0, 0.0)),  # two mappings (other units): stored values
        ([(0.25, -3.0)], True, (1.5, 2.0)),  # a Modality LUT wins
    ],
)
def test_mr_real_world_value_mapping_without_modality_lut(tmp_path, mappings, rescale, expected):
    def edit(ds, k):
        ds.RealWorldValueMappingSequence = [_rwv(*m, label=f"M{n}") for n, m in enumerate(mappings)]

    slopes, intercepts = (1.5, 2.0) if rescale else (None, None)
    synth = sd.write_series(tmp_path, modality="MR", slopes=slopes, intercepts=intercepts, edit=edit)
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    stored = np.stack([synth.stored[k].T for k in range(synth.stored.shape[0])], axis=-1)
    np.testing.assert_allclose(volume.array, stored * expected[0] + expected[1], rtol=1e-6)


def test_enhanced_mr_per_frame_real_world_value_mapping(tmp_path):
    def edit(ds):
        del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
        for item in ds.PerFrameFunctionalGroupsSequence:
            item.RealWorldValueMappingSequence = [_rwv(0.5, 10.0)]

    synth = sd.write_enhanced(tmp_path, edit=edit)
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    stored = np.stack([synth.stored[k].T for k in range(synth.stored.shape[0])], axis=-1)
    np.testing.assert_allclose(volume.array, stored * 0.5 + 10.0, rtol=1e-6)


def test_oblique_affine_survives_nifti_roundtrip(tmp_path):
    iop = sd.oblique_iop(25.0, -12.0, 33.0)
    spacing = (0.8, 0.9, 2.5)
    origin = (-40.0, 12.5, 77.0)
    synth = sd.write_series(tmp_path / "dicom", iop=iop, spacing=spacing, origin=origin)
    volume = read_dicom_series(only_series(scan_dicom([synth.folder])))
    nifti = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), nifti)
    loaded = nib.load(nifti)

    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row_dir, col_dir)
    analytic = np.eye(4)  # written out from the intended geometry, not the values on disk
    analytic[:3, 0] = row_dir * spacing[0]
    analytic[:3, 1] = col_dir * spacing[1]
    analytic[:3, 2] = normal * spacing[2]
    analytic[:3, 3] = origin
    analytic = np.diag([-1.0, -1.0, 1.0, 1.0]) @ analytic
    np.testing.assert_allclose(loaded.affine, analytic, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), synth.expected)

    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    for k in range(5):
        for i, j in [(0, 0), (7, 0), (0, 9), (5, 3)]:
            in_plane = i * synth.pixel_spacing[1] * row_dir + j * synth.pixel_spacing[0] * col_dir
            expected = lps_to_ras * (synth.positions[k] + in_plane)
            np.testing.assert_allclose((loaded.affine @ [i, j, k, 1.0])[:3], expected, atol=1e-4)


def test_in_plane_axes_agree_with_nibabel_dicom_wrapper(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom warns that it is experimental
        from nibabel.nicom.dicomwrappers import wrapper_from_data
    synth = sd.write_series(tmp_path, iop=sd.oblique_iop(), spacing=(0.7, 0.9, 2.0))
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    wrapper = wrapper_from_data(pydicom.dcmread(synth.paths[0]))
    # nibabel: LPS affine of pixel_array as stored, axes (row, column); ours: RAS, axes (column, row)
    ours_in_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    np.testing.assert_allclose(ours_in_lps[:3, [1, 0, 3]], wrapper.affine[:3, [0, 1, 3]], atol=1e-9)
    np.testing.assert_array_equal(volume.array[:, :, 0], wrapper.get_data().T + 0.0)


def test_identical_duplicate_is_dropped_and_verified(tmp_path):
    synth = sd.write_series(tmp_path)
    copy = sd.copy_as(synth.paths[2], tmp_path / "zz_copy_of_slice_2.dcm")
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None
    assert series.dropped_duplicates == [copy]
    assert series.paths == synth.paths and series.shape == (8, 10, 5)
    np.testing.assert_array_equal(read_dicom_series(series).array, synth.expected)


def same_series(synth: sd.SynthSeries) -> dict[str, str]:
    """UID arguments that file another write into the same series (and study, frame of reference)."""
    return {
        "series_uid": synth.series_uid,
        "study_uid": synth.study_uid,
        "frame_of_reference_uid": synth.frame_of_reference_uid,
    }


def uid_of_length(batch: int):
    """An ``edit`` that gives every slice a SOPInstanceUID of the same length (so file sizes match)."""
    return lambda ds, k: setattr(ds, "SOPInstanceUID", f"1.2.826.0.1.3680043.9.7.{batch}.{k}")


def test_same_size_duplicate_with_other_uid_is_dropped_when_pixels_match(tmp_path):
    synth = sd.write_series(tmp_path / "a", seed=4, edit=uid_of_length(1))
    # the same pixels again under new SOP UIDs
    sd.write_series(tmp_path / "b", seed=4, edit=uid_of_length(2), **same_series(synth))
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None and len(series.dropped_duplicates) == 5
    np.testing.assert_array_equal(read_dicom_series(series).array, synth.expected)


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_native_transfer_syntaxes(tmp_path, ts):
    synth = sd.write_series(tmp_path, transfer_syntax=ts, modality="CT")
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    np.testing.assert_array_equal(volume.array, synth.expected)


def test_duplicate_in_another_transfer_syntax_is_compared_by_decoded_values(tmp_path):
    synth = sd.write_series(tmp_path)
    ds = pydicom.dcmread(synth.paths[1])
    ds.compress(RLELossless, generate_instance_uid=False)  # same instance, other bytes
    ds.save_as(tmp_path / "zz_rle_copy.dcm", enforce_file_format=True)
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None and series.dropped_duplicates == [tmp_path / "zz_rle_copy.dcm"]
    np.testing.assert_array_equal(read_dicom_series(series).array, synth.expected)


def test_enhanced_file_copies_are_dropped_and_verified(tmp_path):
    synth = sd.write_enhanced(tmp_path)
    copy = sd.copy_as(synth.paths[0], tmp_path / "zz_copy.dcm")
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None and series.dropped_duplicates == [copy]
    np.testing.assert_array_equal(read_dicom_series(series).array, synth.expected)
    ds = pydicom.dcmread(copy)
    ds.PixelData = bytes(len(ds.PixelData))  # same instance UID, other pixels
    ds.save_as(copy)
    read_raises(series, Reason.CONFLICTING_DUPLICATE)


def test_rle_series_decodes_to_the_same_voxels(tmp_path):
    native = sd.write_series(tmp_path / "native", seed=5, modality="CT")
    rle = sd.write_series(tmp_path / "rle", seed=5, modality="CT", transfer_syntax=RLELossless)
    assert pydicom.dcmread(rle.paths[0]).file_meta.TransferSyntaxUID == RLELossless
    a = read_dicom_series(only_series(scan_dicom([native.folder])))
    b = read_dicom_series(only_series(scan_dicom([rle.folder])))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(b.array, rle.expected)


def test_series_uid_grouping_and_echo_and_matrix_splits(tmp_path):
    first = sd.write_series(tmp_path, prefix="A", echo_time=10.0, echo_number=1)
    second_echo = sd.write_series(
        tmp_path, prefix="B", echo_time=30.0, echo_number=2, series_uid=first.series_uid, seed=1
    )
    other_matrix = sd.write_series(tmp_path, prefix="C", shape=(6, 6, 4), series_uid=first.series_uid, seed=2)
    other_series = sd.write_series(tmp_path, prefix="D", seed=3)
    scan = scan_dicom([tmp_path])
    assert scan.file_rejects == []
    by_paths = {tuple(s.paths): s for s in scan.series}
    assert set(by_paths) == {tuple(x.paths) for x in (first, second_echo, other_matrix, other_series)}
    assert all(s.reject is None for s in scan.series)
    assert len({s.key for s in scan.series}) == 4
    assert by_paths[tuple(other_matrix.paths)].shape == (6, 6, 4)
    volume = read_dicom_series(by_paths[tuple(second_echo.paths)])
    np.testing.assert_array_equal(volume.array, second_echo.expected)


def test_keys_are_stable_across_copies_and_carry_no_identifiers(tmp_path):
    sd.write_series(tmp_path / "site" / "a")
    sd.write_series(tmp_path / "site" / "b", shape=(8, 10, 4), seed=1)
    shutil.copytree(tmp_path / "site", tmp_path / "copy")
    keys = [s.key for s in scan_dicom([tmp_path / "site"]).series]
    assert keys == [s.key for s in scan_dicom([tmp_path / "copy"]).series]
    assert all(len(k) == 64 and set(k) <= set("0123456789abcdef") for k in keys)


def test_enhanced_multiframe_reads_as_volume(tmp_path):
    slopes = [1.0, 0.5, 2.0, 1.5, 3.0]
    synth = sd.write_enhanced(
        tmp_path, modality="CT", slopes=slopes, intercepts=-1000.0, iop=sd.oblique_iop()
    )
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None and series.multiframe
    assert series.paths == synth.paths and series.frames == synth.frame_indices
    assert series.frames != sorted(series.frames)  # frames are stored out of slice order
    volume = read_dicom_series(series)
    np.testing.assert_array_equal(volume.array, synth.expected)
    np.testing.assert_allclose(volume.affine, synth.affine, atol=1e-9)
    assert volume.meta["dicom"]["frame_numbers"] == [f + 1 for f in synth.frame_indices]
    assert volume.meta["dicom"]["sop_instance_uids"] == synth.sop_uids * 5


def test_enhanced_per_frame_geometry_and_rle(tmp_path):
    synth = sd.write_enhanced(tmp_path, per_frame_geometry=True, transfer_syntax=RLELossless, slopes=2.0)
    volume = read_dicom_series(only_series(scan_dicom([tmp_path])))
    np.testing.assert_array_equal(volume.array, synth.expected)
    np.testing.assert_allclose(volume.affine, synth.affine, atol=1e-9)


def test_enhanced_multi_echo_splits_into_one_series_per_echo(tmp_path):
    offsets = [0.0, 2.0, 4.0, 6.0]
    synth = sd.write_enhanced(
        tmp_path, offsets=offsets * 2, echo_times=[10.0] * 4 + [40.0] * 4, shuffle_frames=False
    )
    scan = scan_dicom([tmp_path])
    assert [s.reject for s in scan.series] == [None, None]
    assert sorted(s.frames for s in scan.series) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for series in scan.series:
        volume = read_dicom_series(series)
        first = series.frames[0]
        np.testing.assert_array_equal(volume.array, synth.expected[:, :, first : first + 4])


# ------------------------------------------------------------------------------------ one test per rejection


@pytest.mark.parametrize("kind", ["random", "text", "empty", "cut_preamble"])
def test_not_dicom(tmp_path, kind):
    if kind == "cut_preamble":
        good = sd.write_series(tmp_path / "src", shape=(8, 10, 2))
        path = sd.cut_preamble(good.paths[0], tmp_path / "cut.dcm")
    else:
        path = sd.write_not_dicom(tmp_path / "bad.dcm", kind)
    scan = scan_dicom([path])
    assert scan.series == []
    assert [(p, e.reason) for p, e in scan.file_rejects] == [(path, Reason.NOT_DICOM)]


@pytest.mark.parametrize("kind", sd.NON_IMAGE_KINDS)
def test_non_image(tmp_path, kind):
    path = sd.write_non_image(tmp_path / f"{kind}.dcm", kind)
    scan = scan_dicom([tmp_path])
    assert scan.series == []
    assert [(p, e.reason) for p, e in scan.file_rejects] == [(path, Reason.NON_IMAGE)]


def test_non_image_files_beside_a_series_do_not_disturb_it(tmp_path):
    synth = sd.write_series(tmp_path)
    sd.write_non_image(tmp_path / "report.dcm", "sr")
    sd.write_non_image(tmp_path / "DICOMDIR", "dicomdir")
    sd.write_not_dicom(tmp_path / "notes.dcm", "text")
    scan = scan_dicom([tmp_path])
    assert sorted(e.reason.value for _, e in scan.file_rejects) == ["non_image", "non_image", "not_dicom"]
    np.testing.assert_array_equal(read_dicom_series(only_series(scan)).array, synth.expected)
    np.testing.assert_array_equal(read_dicom_dir(tmp_path).array, synth.expected)


def test_unreadable(tmp_path):
    missing = tmp_path / "gone.dcm"
    scan = scan_dicom([missing])
    assert [(p, e.reason) for p, e in scan.file_rejects] == [(missing, Reason.UNREADABLE)]


def test_missing_slice(tmp_path):
    sd.write_series(tmp_path, offsets=[0.0, 2.0, 4.0, 8.0, 10.0])
    scan = scan_dicom([tmp_path])
    assert reason_of(scan) is Reason.MISSING_SLICE
    read_raises(only_series(scan), Reason.MISSING_SLICE)


def test_non_uniform_spacing(tmp_path):
    sd.write_series(tmp_path, offsets=[0.0, 2.0, 4.3, 6.0, 8.0])
    assert reason_of(scan_dicom([tmp_path])) is Reason.NON_UNIFORM_SPACING


def test_spacing_jitter_within_tolerance_is_accepted(tmp_path):
    # 0.005 mm jitter on 2 mm steps: below max(1% of the step, 0.01 mm)
    sd.write_series(tmp_path, offsets=[0.0, 2.005, 3.995, 6.0, 8.005])
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None
    assert series.spacing[2] == pytest.approx(2.00125, abs=1e-9)


@pytest.mark.parametrize("how", ["positions", "tag"])
def test_gantry_tilt(tmp_path, how):
    if how == "positions":
        sd.write_series(tmp_path, shift=(0.0, 0.35, 0.0))  # ~10 degrees off the normal
    else:
        sd.write_series(tmp_path, edit=lambda ds, k: setattr(ds, "GantryDetectorTilt", "12.5"))
    assert reason_of(scan_dicom([tmp_path])) is Reason.GANTRY_TILT


@pytest.mark.parametrize("keyword", ["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"])
def test_missing_geometry(tmp_path, keyword):
    sd.write_series(tmp_path, edit=lambda ds, k: delattr(ds, keyword) if k == 2 else None)
    scan = scan_dicom([tmp_path])
    series = only_series(scan)
    assert series.reject.reason is Reason.MISSING_GEOMETRY and series.affine is None
    assert len(series.paths) == 5


def test_invalid_geometry(tmp_path):
    sd.write_series(tmp_path, iop=(1.0, 0.0, 0.0, 0.3, 0.95, 0.0))  # not orthogonal
    assert reason_of(scan_dicom([tmp_path])) is Reason.INVALID_GEOMETRY


def _set(keyword, value, k_only=None):
    def edit(ds, k):
        if k_only is None or k == k_only:
            setattr(ds, keyword, value)

    return edit


@pytest.mark.parametrize(
    ("edit", "shape"),
    [
        (_set("PixelSpacing", ["NaN", "0.8"]), (8, 10, 3)),
        (_set("PixelSpacing", ["0", "0.8"]), (8, 10, 3)),
        (_set("PixelSpacing", ["1e9", "1e9"]), (8, 10, 3)),
        (_set("PixelSpacing", ["0.8", "inf"]), (8, 10, 1)),
        (_set("ImagePositionPatient", ["inf", "0", "0"], k_only=1), (8, 10, 3)),
        (_set("ImageOrientationPatient", ["1", "0", "0", "0", "0", "0"]), (8, 10, 3)),  # zero vector
        (_set("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]), (8, 10, 3)),  # parallel
        (_set("ImageOrientationPatient", ["NaN", "0", "0", "0", "1", "0"]), (8, 10, 3)),
    ],
    ids=["spacing-nan", "spacing-0", "spacing-1e9", "single-slice-inf", "position-inf", "iop-zero",
         "iop-parallel", "iop-nan"],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom, writing the NaN/inf on purpose
def test_degenerate_geometry(tmp_path, edit, shape):
    sd.write_series(tmp_path, shape=shape, edit=edit)
    scan = scan_dicom([tmp_path])
    assert reason_of(scan) is Reason.DEGENERATE_GEOMETRY, only_series(scan).reject
    read_raises(only_series(scan), Reason.DEGENERATE_GEOMETRY)


def test_absurd_slice_step_is_degenerate_geometry(tmp_path):
    sd.write_series(tmp_path, shape=(8, 10, 2), offsets=[0.0, 1e9])
    assert reason_of(scan_dicom([tmp_path])) is Reason.DEGENERATE_GEOMETRY


@pytest.mark.parametrize("thickness", [2.5, None, 0.0])
def test_single_slice_is_a_volume_of_one_slice(tmp_path, thickness):
    def edit(ds, k):
        if thickness is None:
            del ds.SliceThickness
        else:
            ds.SliceThickness = thickness

    synth = sd.write_series(tmp_path, shape=(8, 10, 1), iop=sd.oblique_iop(), edit=edit)
    series = only_series(scan_dicom([tmp_path]))
    depth = thickness if thickness else geo.SINGLE_SLICE_MM  # SliceThickness, else 1 mm
    assert series.reject is None and series.shape == (8, 10, 1)
    assert series.spacing == pytest.approx((0.8, 0.9, depth))
    volume = read_dicom_series(series)
    np.testing.assert_array_equal(volume.array, synth.expected)
    np.testing.assert_allclose(volume.affine[:, [0, 1, 3]], synth.affine[:, [0, 1, 3]], atol=1e-9)
    normal = np.cross(synth.iop[:3], synth.iop[3:])
    np.testing.assert_allclose(volume.affine[:3, 2], np.array([-1.0, -1.0, 1.0]) * normal * depth, atol=1e-9)


def test_mixed_localizer_by_image_type(tmp_path):
    sd.write_series(tmp_path, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert reason_of(scan_dicom([tmp_path])) is Reason.MIXED_LOCALIZER


def test_orientation_minority_is_a_localizer_and_the_stack_stays(tmp_path):
    stack = sd.write_series(tmp_path, prefix="AX")
    scout = sd.write_series(
        tmp_path, prefix="SC", iop=sd.SAGITTAL, shape=(8, 10, 1), series_uid=stack.series_uid
    )
    scan = scan_dicom([tmp_path])
    by_paths = {tuple(s.paths): s for s in scan.series}
    assert by_paths[tuple(scout.paths)].reject.reason is Reason.MIXED_LOCALIZER
    assert by_paths[tuple(stack.paths)].reject is None


def test_enhanced_localizer_frame_type(tmp_path):
    sd.write_enhanced(tmp_path, frame_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"))
    assert reason_of(scan_dicom([tmp_path])) is Reason.MIXED_LOCALIZER


def test_conflicting_duplicate_at_scan(tmp_path):
    # a dynamic series: two time points at the same positions, told apart by TemporalPositionIdentifier
    first = sd.write_series(
        tmp_path, prefix="T1", edit=lambda ds, k: setattr(ds, "TemporalPositionIdentifier", 1)
    )
    sd.write_series(
        tmp_path,
        prefix="T2",
        seed=1,
        series_uid=first.series_uid,
        edit=lambda ds, k: setattr(ds, "TemporalPositionIdentifier", 2),
    )
    assert reason_of(scan_dicom([tmp_path])) is Reason.CONFLICTING_DUPLICATE


def test_same_size_conflicting_duplicate_is_found_at_scan(tmp_path, monkeypatch):
    # same size, no distinguishing tags: the headers look like a copy, the pixels tell otherwise. The scan
    # compares the pixel bytes of those files (and only those), so prepare gives the verdict a read would.
    first = sd.write_series(tmp_path / "a", seed=1, edit=uid_of_length(1))
    sd.write_series(tmp_path / "b", seed=2, edit=uid_of_length(2), **same_series(first))
    sd.write_series(tmp_path / "c", seed=3)  # another series, no duplicates: headers only
    with_pixels = []
    real_dcmread = pydicom.dcmread

    def spy(fp, *args, **kwargs):
        if not kwargs.get("stop_before_pixels", False):
            with_pixels.append(Path(getattr(fp, "name", fp)).parent.name)
        return real_dcmread(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    series = scan_dicom([tmp_path]).series
    by_folder = {s.paths[0].parent.name: s for s in series}
    assert by_folder["c"].reject is None
    assert by_folder["a"].reject.reason is Reason.CONFLICTING_DUPLICATE
    assert with_pixels and set(with_pixels) <= {"a", "b"}
    # a copy that changes after the scan is still caught when the pixels are read
    monkeypatch.undo()
    copies = sd.write_series(tmp_path / "d", seed=4, edit=uid_of_length(3))
    sd.write_series(tmp_path / "e", seed=4, edit=uid_of_length(4), **same_series(copies))
    scanned = only_series(scan_dicom([tmp_path / "d", tmp_path / "e"]))
    assert scanned.reject is None and len(scanned.dropped_duplicates) == 5
    sd.write_series(tmp_path / "e", seed=5, edit=uid_of_length(4), **same_series(copies))
    read_raises(scanned, Reason.CONFLICTING_DUPLICATE)


def test_enhanced_frames_at_one_position_conflict(tmp_path):
    sd.write_enhanced(tmp_path, offsets=[0.0, 2.0, 2.0, 4.0])
    assert reason_of(scan_dicom([tmp_path])) is Reason.CONFLICTING_DUPLICATE


@pytest.mark.parametrize(
    ("ts", "drop"),
    [
        (ExplicitVRLittleEndian, 30),  # cut inside the pixel data
        (ImplicitVRLittleEndian, 30),
        (ExplicitVRLittleEndian, 8 * 10 * 2 + 12),  # cut before the pixel data element: no pixels at all
    ],
)
def test_truncated_pixels_at_scan(tmp_path, ts, drop):
    synth = sd.write_series(tmp_path, transfer_syntax=ts)
    sd.truncate(synth.paths[3], drop)
    scan = scan_dicom([tmp_path])
    assert reason_of(scan) is Reason.TRUNCATED_PIXELS
    assert only_series(scan).affine is not None  # the geometry is still described
    read_raises(only_series(scan), Reason.TRUNCATED_PIXELS)


def test_truncated_pixels_caught_on_read(tmp_path):
    synth = sd.write_series(tmp_path)
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None
    sd.truncate(synth.paths[1], 30)  # cut after the scan
    read_raises(series, Reason.TRUNCATED_PIXELS)


def test_truncated_file_before_image_attributes(tmp_path):
    synth = sd.write_series(tmp_path, shape=(8, 10, 2))
    data = synth.paths[0].read_bytes()
    meta_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) File Meta Information Group Length
    synth.paths[0].write_bytes(data[: 144 + meta_length + 20])
    scan = scan_dicom([synth.paths[0]])
    assert [(p, e.reason) for p, e in scan.file_rejects] == [(synth.paths[0], Reason.TRUNCATED_FILE)]


def _declare_matrix(ds, rows: int, columns: int, frames: int | None = None) -> None:
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames


@pytest.mark.parametrize("case", ["rows", "frames", "file_voxels", "series_voxels"])
def test_implausible_size(tmp_path, case):
    # the headers declare the sizes; the tiny pixel data is never allocated for
    if case == "rows":
        sd.write_series(tmp_path, edit=lambda ds, k: _declare_matrix(ds, 5000, 8))
    elif case == "frames":
        sd.write_enhanced(tmp_path, edit=lambda ds: _declare_matrix(ds, 10, 8, 6000))
    elif case == "file_voxels":
        sd.write_enhanced(tmp_path, edit=lambda ds: _declare_matrix(ds, 4000, 4000, 100))
    else:  # every file is plausible, the stack of 64 is not (1.02e9 voxels)
        sd.write_series(tmp_path, shape=(8, 10, 64), edit=lambda ds, k: _declare_matrix(ds, 4000, 4000))
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject.reason is Reason.IMPLAUSIBLE_SIZE
    read_raises(series, Reason.IMPLAUSIBLE_SIZE)


def test_read_refuses_implausible_shape_before_allocating(tmp_path):
    sd.write_series(tmp_path)
    series = only_series(scan_dicom([tmp_path]))
    series.shape = (4096, 4096, 100)  # a hand-made record
    read_raises(series, Reason.IMPLAUSIBLE_SIZE)


@pytest.mark.parametrize("ts", [JPEGLossless, JPEGLosslessSV1, JPEG2000Lossless, HTJ2KLossless])
def test_compressed_without_codec_is_missing_codec(tmp_path, ts):
    sd.write_series(tmp_path, transfer_syntax=ts)
    series = only_series(scan_dicom([tmp_path]))
    if get_decoder(ts).is_available:  # e.g. Pillow decodes JPEG 2000: the junk frames fail to decode instead
        assert series.reject is None
        read_raises(series, Reason.DECODE_ERROR)
        return
    assert series.reject.reason is Reason.MISSING_CODEC
    assert CODECS_HINT in series.reject.detail and ts.name in series.reject.detail
    error = read_raises(series, Reason.MISSING_CODEC)
    assert CODECS_HINT in str(error)


def test_decode_error(tmp_path):
    synth = sd.write_series(tmp_path)
    sd.junk_frames(synth.paths[2], RLELossless)
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is None  # nothing to see without decoding
    read_raises(series, Reason.DECODE_ERROR)


@pytest.mark.parametrize("case", ["colour", "palette", "no_series_uid"])
def test_unsupported(tmp_path, case):
    if case == "colour":

        def colour(ds, k):
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

        sd.write_series(tmp_path, edit=colour)
        assert reason_of(scan_dicom([tmp_path])) is Reason.UNSUPPORTED
    elif case == "palette":
        sd.write_series(
            tmp_path, edit=lambda ds, k: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR")
        )
        assert reason_of(scan_dicom([tmp_path])) is Reason.UNSUPPORTED
    else:
        synth = sd.write_series(
            tmp_path, shape=(8, 10, 2), edit=lambda ds, k: delattr(ds, "SeriesInstanceUID")
        )
        scan = scan_dicom([tmp_path])
        assert scan.series == []
        assert [(p, e.reason) for p, e in scan.file_rejects] == [(p, Reason.UNSUPPORTED) for p in synth.paths]


def test_files_changed_since_scan_are_refused(tmp_path):
    synth = sd.write_series(tmp_path)
    series = only_series(scan_dicom([tmp_path]))
    for k, path in enumerate(
        synth.paths
    ):  # the whole stack moved 1 mm: still valid, but not what was scanned
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [-19.0, -30.0, 10.0 + 2.0 * k]
        ds.save_as(path)
    read_raises(series, Reason.INVALID_GEOMETRY)


# ------------------------------------------------------------------------------------------ scan properties


def test_scan_opens_each_file_once_without_pixels(tmp_path, monkeypatch):
    sd.write_series(tmp_path / "a")
    sd.write_enhanced(tmp_path / "b")
    sd.write_non_image(tmp_path / "sr.dcm", "sr")
    calls = []
    real_dcmread = pydicom.dcmread

    def spy(fp, *args, **kwargs):
        calls.append((getattr(fp, "name", fp), kwargs.get("stop_before_pixels", False)))
        return real_dcmread(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    scan = scan_dicom([tmp_path])
    assert len(scan.series) == 2 and len(scan.file_rejects) == 1
    names = [name for name, _ in calls]
    assert len(names) == len(set(names)) == 7
    assert all(stop for _, stop in calls)


def test_corrupt_files_never_crash_the_scan(tmp_path):
    good = sd.write_series(tmp_path / "src", shape=(8, 10, 2))
    data = good.paths[0].read_bytes()
    folder = tmp_path / "corrupt"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for cut in range(0, len(data), 23):
        (folder / f"cut{cut:05d}.dcm").write_bytes(data[:cut])
    for n in range(40):
        flipped = bytearray(data)
        for index in rng.integers(128, len(data), 4):
            flipped[index] = int(rng.integers(0, 256))
        (folder / f"flip{n:03d}.dcm").write_bytes(bytes(flipped))
    files = sorted(folder.iterdir())
    scan = scan_dicom(files)
    accounted = {p for p, _ in scan.file_rejects} | {p for s in scan.series for p in s.paths}
    accounted |= {p for s in scan.series for p in s.dropped_duplicates}
    assert accounted == set(files)
    for series in scan.series:
        try:
            volume = read_dicom_series(series)
        except RejectedInput:
            continue
        assert volume.array.dtype == np.float32 and np.all(np.isfinite(volume.array))


def test_read_dicom_dir(tmp_path):
    synth = sd.write_series(tmp_path / "one")
    np.testing.assert_array_equal(read_dicom_dir(tmp_path / "one").array, synth.expected)
    sd.write_series(tmp_path / "two" / "a")
    sd.write_series(tmp_path / "two" / "b")
    with pytest.raises(ValueError, match="2 readable"):
        read_dicom_dir(tmp_path / "two")
    sd.write_series(tmp_path / "bad", offsets=[0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(RejectedInput) as info:
        read_dicom_dir(tmp_path / "bad")
    assert info.value.reason is Reason.MISSING_SLICE
    with pytest.raises(ValueError, match="folder"):
        read_dicom_dir(synth.paths[0])


# ---------------------------------------------------------------------------------------- geometry maths


def test_stack_geometry_matches_the_dicom_definition():
    iop = sd.oblique_iop(10.0, 20.0, 30.0)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([[1.0, 2.0, 3.0]]) + np.arange(4)[:, None] * 1.5 * normal
    geometry = geo.stack_geometry(iop, (0.7, 0.6), positions)
    assert geometry.spacing == pytest.approx((0.6, 0.7, 1.5))
    lps = np.diag([-1.0, -1.0, 1.0]) @ (geometry.affine @ [2.0, 3.0, 1.0, 1.0])[:3]
    expected = positions[1] + 2 * 0.6 * np.array(iop[:3]) + 3 * 0.7 * np.array(iop[3:])
    np.testing.assert_allclose(lps, expected, atol=1e-12)
    assert np.linalg.det(geometry.affine[:3, :3]) > 0  # ascending along row x column: right-handed in LPS
    tilt = math.tan(math.radians(2.0)) * 1.5  # 2 degrees
    tilted = positions + np.arange(4)[:, None] * tilt * np.array(iop[:3])
    with pytest.raises(RejectedInput) as info:
        geo.stack_geometry(iop, (0.7, 0.6), tilted)
    assert info.value.reason is Reason.GANTRY_TILT


def test_position_groups_orders_along_normal_and_gathers_duplicates():
    normal = np.array([0.0, 0.0, 1.0])
    positions = np.array([[0, 0, 4.0], [0, 0, 0.0], [0, 0, 2.0], [0, 0, 2.004], [0, 0, 6.0]])
    assert geo.position_groups(positions, normal) == [[1], [2, 3], [0], [4]]


# ------------------------------------------------------------------------ malformed headers (found by fuzzing)


def _edit_all(synth: sd.SynthSeries, change) -> None:
    import fuzz_dicom as fz

    for path in synth.paths:
        fz.edit_file(path, change)


def _raw_value(keyword: str, value: bytes):
    import fuzz_dicom as fz

    return lambda ds: fz.set_raw(ds, keyword, value)


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        (_raw_value("RescaleIntercept", b"abc"), Reason.UNREADABLE, "RescaleIntercept is not a finite number"),
        (_raw_value("RescaleSlope", b"nan"), Reason.UNREADABLE, "RescaleSlope is not a finite number"),
        (lambda ds: setattr(ds, "BitsStored", 17), Reason.UNSUPPORTED, "BitsStored 17 does not fit"),
        (lambda ds: setattr(ds, "PixelRepresentation", 2), Reason.UNSUPPORTED, "PixelRepresentation 2"),
        (lambda ds: setattr(ds, "SamplesPerPixel", 0), Reason.UNREADABLE, "SamplesPerPixel 0"),
        (lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME7"), Reason.UNSUPPORTED, "MONOCHROME7"),
        (lambda ds: delattr(ds, "BitsStored"), Reason.UNREADABLE, "lacks BitsStored"),
        (lambda ds: (delattr(ds, "Rows"), ds.add_new(0x00280010, "DS", "10")), Reason.UNREADABLE,
         "Rows is not a single integer"),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData * 2), Reason.DECODE_ERROR, "2 frames' worth"),
    ],
    ids=["text-intercept", "nan-slope", "bits-stored", "representation", "samples", "photometric",
         "no-bits-stored", "rows-as-ds", "excess-frame"],
)  # fmt: skip
def test_a_malformed_pixel_description_or_rescale_is_refused_at_scan_time(tmp_path, change, reason, detail):
    synth = sd.write_series(tmp_path, modality="CT")
    _edit_all(synth, change)
    series = only_series(scan_dicom([tmp_path]))
    assert series.reject is not None and series.reject.reason is reason
    assert detail in series.reject.detail  # a clear sentence, not a decoder's exception type
    read_raises(series, reason)


def test_one_image_with_an_invalid_orientation_is_not_called_a_localizer(tmp_path):
    import fuzz_dicom as fz

    synth = sd.write_series(tmp_path, shape=(8, 10, 5))
    fz.edit_file(synth.paths[-1], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.5, 0.5, 0]))
    scan = scan_dicom([tmp_path])
    reasons = sorted(str(s.reject.reason.value) if s.reject else "ok" for s in scan.series)
    assert reasons == ["invalid_geometry", "ok"]  # the other four slices stay a series


def test_a_cut_deflated_file_and_failing_decoders_log_nothing(tmp_path, caplog):
    synth = sd.write_series(tmp_path / "deflated", transfer_syntax=DeflatedExplicitVRLittleEndian)
    sd.truncate(synth.paths[2], 100)
    scan = scan_dicom([tmp_path / "deflated"])
    assert [(reject.reason, reject.detail) for _, reject in scan.file_rejects] == [
        (Reason.UNREADABLE, "the deflated data set cannot be inflated (cut short or damaged)")
    ]
    junk = sd.write_series(tmp_path / "junk")
    sd.junk_frames(junk.paths[1], RLELossless)
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        read_raises(only_series(scan_dicom([tmp_path / "junk"])), Reason.DECODE_ERROR)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]  # no tracebacks per plugin
