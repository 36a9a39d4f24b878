"""fastMRI-layout HDF5: inspection without reading arrays, typed reading, rejections, image volume."""

import h5py
import numpy as np
import pytest

from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.kspace_h5 import inspect_kspace_h5, is_hdf5, kspace_volume, read_kspace_h5, rss_image

HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
 <encoding>
  <encodedSpace><matrixSize><x>16</x><y>12</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>32.0</x><y>18.0</y><z>3.0</z></fieldOfView_mm></encodedSpace>
  <reconSpace><matrixSize><x>8</x><y>8</y><z>1</z></matrixSize>
   <fieldOfView_mm><x>16.0</x><y>12.0</y><z>3.0</z></fieldOfView_mm></reconSpace>
 </encoding>
</ismrmrdHeader>"""


def _kspace(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def _write(path, kspace=None, *, mask=None, target=None, header=True, attrs=None):
    with h5py.File(path, "w") as f:
        if kspace is not None:
            f.create_dataset("kspace", data=kspace)
        if mask is not None:
            f.create_dataset("mask", data=mask)
        if target is not None:
            f.create_dataset("reconstruction_rss", data=target)
        if header:
            f.create_dataset("ismrmrd_header", data=HEADER.encode())
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def test_multicoil_read_and_inspect(tmp_path):
    k = _kspace((3, 4, 16, 12))
    mask = np.zeros(12, bool)
    mask[4:8] = True
    target = np.random.default_rng(2).random((3, 8, 8)).astype(np.float32)
    path = _write(
        tmp_path / "mc.h5",
        k,
        mask=mask,
        target=target,
        attrs={"acquisition": "CORPD_FBK", "max": 0.5, "patient_id": "abc123"},
    )
    assert is_hdf5(path)
    info = inspect_kspace_h5(path)
    assert info.kspace_shape == (3, 4, 16, 12) and info.multicoil and info.has_mask
    assert info.target_key == "reconstruction_rss" and info.target_shape == (3, 8, 8)
    assert info.attrs_safe == {"acquisition": "CORPD_FBK", "max": 0.5}  # patient_id is not passed on
    assert info.patient_key and "abc123" not in info.patient_key
    assert info.volume_shape == (8, 8, 3)
    assert info.volume_spacing == pytest.approx((1.5, 2.0, 3.0))  # (columns: 12/8, rows: 16/8, slice 3)

    data = read_kspace_h5(path)
    assert data.kspace.dtype == np.complex64 and data.kspace.shape == (3, 4, 16, 12)
    np.testing.assert_array_equal(data.kspace, k)
    assert data.mask.dtype == np.float32 and data.mask.tolist() == mask.astype(float).tolist()
    np.testing.assert_array_equal(data.target, target)
    assert "patient_id" not in data.attrs_safe

    volume = kspace_volume(path)
    assert volume.shape == (8, 8, 3) and volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array[:, :, 1], target[1].T)
    np.testing.assert_allclose(volume.affine, np.diag([1.5, 2.0, 3.0, 1.0]))
    assert volume.meta["modality"] == "MR" and volume.meta["kspace_h5"]["image"] == "reconstruction_rss"


def test_single_coil_without_target_gives_rss_of_ifft(tmp_path):
    image = np.random.default_rng(3).random((2, 16, 12)).astype(np.float32)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    path = _write(tmp_path / "sc.h5", k.astype(np.complex64), header=False)
    info = inspect_kspace_h5(path)
    assert not info.multicoil and info.target_key is None and info.volume_spacing == (1.0, 1.0, 1.0)
    volume = kspace_volume(path)
    assert volume.shape == (12, 16, 2)
    np.testing.assert_allclose(volume.array, np.transpose(image, (2, 1, 0)), atol=1e-5)
    assert volume.meta["kspace_h5"]["geometry"] == "unknown"


def test_rss_combines_coils():
    k = _kspace((1, 3, 8, 8))
    coils = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    expected = np.sqrt((np.abs(coils) ** 2).sum(axis=1))
    np.testing.assert_allclose(rss_image(k, multicoil=True), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "kspace, detail",
    [
        (None, "no 'kspace'"),
        (np.zeros((2, 8, 8), np.float32), "complex64 expected"),
        (_kspace((8, 8)), "shape"),
        (_kspace((1, 2, 2, 8, 8)), "shape"),
    ],
    ids=["missing", "real", "rank2", "rank5"],
)
def test_bad_layouts_are_unsupported(tmp_path, kspace, detail):
    path = _write(tmp_path / "bad.h5", kspace)
    with pytest.raises(RejectedInput) as info:
        inspect_kspace_h5(path)
    assert info.value.reason == Reason.UNSUPPORTED and detail in info.value.detail


def test_mask_of_wrong_length_is_unsupported(tmp_path):
    path = _write(tmp_path / "m.h5", _kspace((2, 8, 6)), mask=np.ones(5, bool))
    with pytest.raises(RejectedInput, match="mask"):
        read_kspace_h5(path)


def test_truncated_and_garbage_files(tmp_path):
    good = _write(tmp_path / "g.h5", _kspace((2, 8, 8)))
    raw = good.read_bytes()
    (tmp_path / "t.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RejectedInput) as info:
        read_kspace_h5(tmp_path / "t.h5")
    assert info.value.reason == Reason.TRUNCATED_FILE
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    with pytest.raises(RejectedInput) as info:
        inspect_kspace_h5(tmp_path / "junk.h5")
    assert info.value.reason in (Reason.UNREADABLE, Reason.TRUNCATED_FILE)
    (tmp_path / "text.h5").write_text("not hdf5")
    assert not is_hdf5(tmp_path / "text.h5")
    with pytest.raises(RejectedInput) as info:
        inspect_kspace_h5(tmp_path / "text.h5")
    assert info.value.reason == Reason.UNREADABLE


def test_inspect_does_not_read_the_array(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.h5", _kspace((2, 2, 8, 8)), target=np.zeros((2, 8, 8), np.float32))
    reads = []
    getitem = h5py.Dataset.__getitem__

    def counting(self, *args, **kwargs):
        reads.append(self.name)
        return getitem(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    info = inspect_kspace_h5(path)
    assert info.kspace_shape == (2, 2, 8, 8) and info.volume_spacing == pytest.approx((1.5, 2.0, 3.0))
    assert reads == ["/ismrmrd_header"]  # only the small XML header, never kspace or the target
    read_kspace_h5(path)
    assert "/kspace" in reads


@pytest.mark.parametrize(
    ("old", "new"),
    [("<x>32.0</x>", "<x>0</x>"), ("<y>12</y>", "<y>0</y>"), ("<z>3.0</z>", "<z>NaN</z>"),
     ("<x>16.0</x>", "<x>1e12</x>"), ("<y>18.0</y>", "<y>wide</y>")],
    ids=["fov-0", "matrix-0", "nan", "absurd", "not-a-number"],
)  # fmt: skip
def test_degenerate_header_spacing_is_refused_at_inspection(tmp_path, old, new):
    """A header that gives a voxel size gives a plausible one; one that gives none means 1 mm (nominal)."""
    path = _write(tmp_path / "d.h5", _kspace((1, 8, 8)))
    with h5py.File(path, "a") as f:
        del f["ismrmrd_header"]
        f.create_dataset("ismrmrd_header", data=HEADER.replace(old, new, 1).encode())
    for read in (inspect_kspace_h5, kspace_volume):
        with pytest.raises(RejectedInput) as info:
            read(path)
        assert info.value.reason == Reason.DEGENERATE_GEOMETRY


def test_single_slice_file_is_a_volume_of_one_slice(tmp_path):
    path = _write(tmp_path / "one.h5", _kspace((1, 16, 12)))
    assert inspect_kspace_h5(path).volume_shape == (12, 16, 1)
    assert kspace_volume(path).shape == (12, 16, 1)
