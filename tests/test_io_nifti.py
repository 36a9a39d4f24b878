"""NIfTI reading (sform/qform rule, rejections) and writing (float32, affine, clean header, atomic)."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.nifti import inspect_nifti, read_nifti, write_nifti
from medrecon.volume import Volume

OBLIQUE = np.array(
    [
        [0.9, -0.3, 0.1, -40.0],
        [0.25, 1.1, 0.2, 12.5],
        [-0.05, 0.1, 2.4, 7.25],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _img(shape=(6, 5, 4), dtype=np.int16, affine=None):
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return nib.Nifti1Image(data, np.eye(4) if affine is None else affine)


def _save(img, path, sform_code=None, qform_code=None):
    if sform_code is not None:
        img.header.set_sform(img.header.get_sform(), code=sform_code)
    if qform_code is not None:
        img.header.set_qform(img.header.get_best_affine(), code=qform_code)
    nib.save(img, str(path))
    return path


def _reason(path):
    with pytest.raises(RejectedInput) as info:
        read_nifti(path)
    return info.value.reason


def test_round_trip_keeps_affine_and_float32(tmp_path):
    data = np.random.default_rng(0).normal(size=(7, 6, 5)).astype(np.float64)
    out = write_nifti(Volume(data, OBLIQUE, {"modality": "MR"}), tmp_path / "v.nii.gz")
    back = read_nifti(out)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, data.astype(np.float32))
    np.testing.assert_allclose(back.affine, OBLIQUE, atol=1e-6)
    header = nib.load(str(out)).header
    assert header.get_data_dtype() == np.float32
    assert header["descrip"].item() == b"medrecon"
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    assert back.meta["source_format"] == "nifti" and back.meta["nifti"]["xform"] == "sform"
    assert [p.name for p in tmp_path.iterdir()] == ["v.nii.gz"]  # no temporary left behind


def test_write_keeps_source_xform_code_and_drops_source_description(tmp_path):
    img = _img(affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header["descrip"] = b"Doe^Jane 1970"
    src = read_nifti(_save(img, tmp_path / "src.nii", sform_code=4))
    out = write_nifti(src, tmp_path / "out.nii.gz")
    header = nib.load(str(out)).header
    assert int(header["sform_code"]) == 4
    assert b"Doe" not in gzip.open(out).read()


def test_sform_wins_over_qform(tmp_path):
    img = _img(affine=np.diag([2.0, 3.0, 4.0, 1.0]))
    img.set_qform(np.diag([5.0, 5.0, 5.0, 1.0]), code=1)
    img.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), code=2)
    nib.save(img, str(tmp_path / "a.nii"))
    volume = read_nifti(tmp_path / "a.nii")
    np.testing.assert_allclose(volume.affine, np.diag([2.0, 3.0, 4.0, 1.0]))
    assert volume.meta["nifti"] == {"xform": "sform", "xform_code": 2}


def test_qform_used_when_sform_code_is_zero(tmp_path):
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    qform = np.eye(4)
    qform[:3, :3] = rotation @ np.diag([1.5, 2.0, 2.5])
    qform[:3, 3] = [10.0, -20.0, 30.0]
    img = _img()
    img.set_sform(np.diag([9.0, 9.0, 9.0, 1.0]), code=0)
    img.set_qform(qform, code=1)
    nib.save(img, str(tmp_path / "q.nii.gz"))
    volume = read_nifti(tmp_path / "q.nii.gz")
    np.testing.assert_allclose(volume.affine, qform, atol=1e-6)
    assert volume.meta["nifti"]["xform"] == "qform"
    assert volume.spacing == pytest.approx((1.5, 2.0, 2.5))


def test_no_coded_orientation_is_missing_geometry(tmp_path):
    img = _img()
    img.set_sform(np.eye(4), code=0)
    img.set_qform(np.eye(4), code=0)
    nib.save(img, str(tmp_path / "n.nii"))
    assert _reason(tmp_path / "n.nii") == Reason.MISSING_GEOMETRY


@pytest.mark.parametrize(
    "affine",
    [np.diag([1.0, 1.0, 0.0, 1.0]), np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])],
    ids=["zero-voxel", "collinear"],
)
def test_singular_affine_is_degenerate_geometry(tmp_path, affine):
    img = _img()
    img.set_sform(affine, code=2)
    nib.save(img, str(tmp_path / "s.nii"))
    assert _reason(tmp_path / "s.nii") == Reason.DEGENERATE_GEOMETRY


def test_nan_affine_is_degenerate_geometry(tmp_path):
    path = tmp_path / "nan.nii"
    _save(_img(), path, sform_code=2)
    raw = bytearray(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(open(path, "rb"))
    header["srow_x"] = [np.nan, 0.0, 0.0, 0.0]
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    assert _reason(path) == Reason.DEGENERATE_GEOMETRY


@pytest.mark.parametrize("size", [1e9, 1e-5])
def test_implausible_voxel_size_is_degenerate_geometry(tmp_path, size):
    _save(_img(affine=np.diag([1.0, size, 1.0, 1.0])), tmp_path / "big.nii", sform_code=1)
    assert _reason(tmp_path / "big.nii") == Reason.DEGENERATE_GEOMETRY
    with pytest.raises(RejectedInput) as info:
        inspect_nifti(tmp_path / "big.nii")  # at header-scan time too (prepare)
    assert info.value.reason == Reason.DEGENERATE_GEOMETRY and "plausible" in info.value.detail


def _edit_header(path, **fields):
    """Rewrite header fields in the file as stored (nibabel would re-derive or "fix" them on save)."""
    raw = bytearray(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(open(path, "rb"), check=False)
    for name, (index, value) in fields.items():
        header[name][index] = value
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("value", [0.0, -2.0, np.nan])
def test_qform_with_bad_pixdim_is_degenerate_geometry(tmp_path, value):
    # nibabel itself would read pixdim 0 as 1 mm and -2 as 2 mm: medrecon refuses instead of guessing
    path = _two_xforms(tmp_path / "q.nii", np.eye(4), np.diag([2.0, 3.0, 4.0, 1.0]), 0, 1)
    assert read_nifti(path).spacing == pytest.approx((2.0, 3.0, 4.0))
    _edit_header(path, pixdim=(1, value))
    assert _reason(path) == Reason.DEGENERATE_GEOMETRY


def _two_xforms(path, sform, qform, sform_code, qform_code, shape=(6, 5, 4)):
    img = _img(shape=shape)
    img.set_sform(sform, code=sform_code)
    img.set_qform(qform, code=qform_code)
    nib.save(img, str(path))
    return _edit_header(path, sform_code=((), sform_code), qform_code=((), qform_code))


def test_sform_and_qform_of_one_space_that_disagree_are_degenerate(tmp_path):
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0  # the qform puts the volume 5 mm away
    path = _two_xforms(tmp_path / "c.nii", np.eye(4), shifted, 1, 1)
    assert _reason(path) == Reason.DEGENERATE_GEOMETRY
    # a pixdim of 0 under an sform: the qform (built from pixdim) now contradicts the sform of its space
    path = _edit_header(_two_xforms(tmp_path / "p.nii", np.eye(4), np.eye(4), 1, 1), pixdim=(3, 0.0))
    assert _reason(path) == Reason.DEGENERATE_GEOMETRY


def test_sform_rule_decides_when_the_spaces_differ_or_only_a_shear_differs(tmp_path):
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    # a template sform beside a scanner qform: two spaces, the sform wins as before
    volume = read_nifti(_two_xforms(tmp_path / "t.nii", np.eye(4), shifted, 4, 1))
    np.testing.assert_allclose(volume.affine, np.eye(4))
    # a sheared sform with the qform nibabel derives from it (same code): the shear is no contradiction
    sheared = np.array([[1.0, 0.4, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0, 0, 0, 1.0]])
    volume = read_nifti(_two_xforms(tmp_path / "s.nii", sheared, sheared, 1, 1))
    np.testing.assert_allclose(volume.affine, sheared, atol=1e-6)


def test_scaling_is_applied(tmp_path):
    img = _img(dtype=np.int16)
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, str(tmp_path / "sc.nii"))
    volume = read_nifti(tmp_path / "sc.nii")
    expected = np.arange(120).reshape(6, 5, 4) * 0.5 - 3.0
    np.testing.assert_allclose(volume.array, expected)
    assert volume.array.dtype == np.float32


def test_truncated_gzip(tmp_path):
    good = _save(_img(shape=(16, 16, 8), dtype=np.float32), tmp_path / "g.nii.gz", sform_code=1)
    raw = good.read_bytes()
    bad = tmp_path / "t.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    assert _reason(bad) == Reason.TRUNCATED_FILE
    with pytest.raises(RejectedInput) as info:
        inspect_nifti(bad)
    assert info.value.reason == Reason.TRUNCATED_FILE


def test_truncated_uncompressed_data(tmp_path):
    good = _save(_img(shape=(8, 8, 8)), tmp_path / "u.nii", sform_code=1)
    bad = tmp_path / "tu.nii"
    bad.write_bytes(good.read_bytes()[:-100])
    assert _reason(bad) == Reason.TRUNCATED_FILE


def test_random_bytes_are_unreadable(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(np.random.default_rng(1).bytes(400))
    assert _reason(path) == Reason.UNREADABLE


def test_4d_rejected_unless_singleton(tmp_path):
    _save(_img(shape=(4, 4, 3, 2)), tmp_path / "t.nii", sform_code=1)
    assert _reason(tmp_path / "t.nii") == Reason.UNSUPPORTED
    _save(_img(shape=(4, 4, 3, 1)), tmp_path / "one.nii", sform_code=1)
    volume = read_nifti(tmp_path / "one.nii")
    assert volume.shape == (4, 4, 3)


def test_single_2d_image_is_a_volume_of_one_slice(tmp_path):
    data = np.arange(30, dtype=np.float32).reshape(5, 6)
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "flat.nii"))
    nib.save(nib.Nifti1Image(data[..., None], affine), str(tmp_path / "one.nii.gz"))
    for name in ("flat.nii", "one.nii.gz"):
        assert inspect_nifti(tmp_path / name).shape == (5, 6, 1)
        volume = read_nifti(tmp_path / name)
        assert volume.shape == (5, 6, 1)
        np.testing.assert_array_equal(volume.array[..., 0], data)
        np.testing.assert_allclose(volume.affine, affine)
    # a line (one voxel along an in-plane axis) is not an image
    nib.save(nib.Nifti1Image(np.zeros((1, 5, 4), np.float32), np.eye(4)), str(tmp_path / "line.nii"))
    assert _reason(tmp_path / "line.nii") == Reason.TOO_FEW_SLICES


def test_write_rejects_bad_name_and_affine(tmp_path):
    volume = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="nii"):
        write_nifti(volume, tmp_path / "v.img")
    volume.affine[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_nifti(volume, tmp_path / "v.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_get_umask_permissions_even_when_the_writer_recreates_the_file(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    from medrecon.io.atomic import atomic_path

    umask = os.umask(0o022)
    try:
        dest = tmp_path / "w.safetensors"
        with atomic_path(dest) as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))  # safetensors recreates the file with mode 0600
        assert dest.stat().st_mode & 0o777 == 0o644
        assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind
    finally:
        os.umask(umask)
