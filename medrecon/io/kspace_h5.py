"""fastMRI-layout k-space HDF5 files: header inspection, validated reading, and an image volume from them.

Layout (https://fastmri.org/dataset): a dataset ``kspace`` of complex values, ``(slices, H, W)`` single-coil
or ``(slices, coils, H, W)`` multi-coil (``H`` is the readout direction, usually 2x oversampled); optionally
``mask`` ``(W,)`` (the phase-encoding lines that were sampled, test/challenge files), a ground truth
``reconstruction_rss`` (multi-coil) or ``reconstruction_esc`` (single-coil) ``(slices, h, w)`` float32
(usually cropped to 320 x 320), an XML dataset ``ismrmrd_header`` and file attributes (``acquisition``,
``max``, ``norm``, ``patient_id``, ...).

Only attributes on an allow-list (``SAFE_ATTRS``) are returned: ``patient_id`` (a hash in fastMRI, but an
identifier nonetheless) and anything unknown is dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.grid import check_spacing
from medrecon.volume import Volume

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SAFE_ATTRS = ("acquisition", "max", "norm", "acceleration", "num_low_frequency")
TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")
_ISMRMRD_NS = {"m": "http://www.ismrm.org/ISMRMRD"}


@dataclass(frozen=True)
class KSpaceInfo:
    """A fastMRI file's layout, from the HDF5 metadata only (no array is read).

    Attributes:
        kspace_shape: ``(slices, H, W)`` or ``(slices, coils, H, W)``.
        multicoil: whether ``kspace`` has a coil axis.
        has_mask: whether a ``mask`` dataset ``(W,)`` is present.
        target_key: ``"reconstruction_rss"`` / ``"reconstruction_esc"`` or ``None``.
        target_shape: ``(slices, h, w)`` of the ground truth, or ``None``.
        attrs_safe: the allow-listed file attributes as plain Python values.
        encoded_spacing: ``(row mm, column mm, slice mm)`` of the full (inverse-FFT) image grid ``(H, W)``,
            from the ISMRMRD header's encodedSpace (field of view / matrix); ``None`` when unknown.
        recon_spacing: the same for the ground-truth grid (reconSpace); ``None`` when unknown.
        recon_matrix: the reconSpace matrix size ``(x, y, z)`` = (rows ``h``, columns ``w``, slices) of the
            ground-truth grid (fastMRI's ``recon_size``, what reconstructions are cropped to); ``None`` when
            the header does not state it as positive integers.
        patient_key: a one-way hash of the ``patient_id`` attribute (to keep a patient's files in one split),
            ``None`` without one; the attribute itself is never returned.
    """

    kspace_shape: tuple[int, ...]
    multicoil: bool
    has_mask: bool
    target_key: str | None
    target_shape: tuple[int, int, int] | None
    attrs_safe: dict[str, Any] = field(default_factory=dict)
    encoded_spacing: tuple[float, float, float] | None = None
    recon_spacing: tuple[float, float, float] | None = None
    patient_key: str | None = None
    recon_matrix: tuple[int, int, int] | None = None

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        """``(I, J, K)`` = (columns, rows, slices) of the volume ``kspace_volume`` returns."""
        slices, rows, cols = (
            self.target_shape if self.target_shape else (self.kspace_shape[0], *self.kspace_shape[-2:])
        )
        return (cols, rows, slices)

    @property
    def volume_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``volume_shape``'s axes (1 mm where the header does not say)."""
        spacing = self.recon_spacing if self.target_shape else self.encoded_spacing
        if spacing is None:
            return (1.0, 1.0, 1.0)
        row_mm, col_mm, slice_mm = spacing
        return (col_mm, row_mm, slice_mm)


@dataclass
class KSpaceData:
    """The arrays of a fastMRI file.

    Attributes:
        kspace: complex64 ``(slices, H, W)`` or ``(slices, coils, H, W)``, centred (DC in the middle).
        mask: float32 ``(W,)`` of 0/1 (1 = sampled column), or ``None``.
        target: float32 ``(slices, h, w)`` ground-truth magnitude image, or ``None``.
        attrs_safe: allow-listed attributes (see ``SAFE_ATTRS``).
        info: the header-level description (shapes, spacing).
    """

    kspace: np.ndarray
    mask: np.ndarray | None
    target: np.ndarray | None
    attrs_safe: dict[str, Any]
    info: KSpaceInfo


def is_hdf5(path: str | Path) -> bool:
    """True when the file starts with the HDF5 signature (files with a user block are not recognised)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except OSError:
        return False


def inspect_kspace_h5(path: str | Path) -> KSpaceInfo:
    """Describe a fastMRI file from its metadata; raises ``RejectedInput`` for a file medrecon cannot use.

    Reasons: ``truncated_file`` (HDF5 reports the file shorter than its superblock says), ``unreadable``
    (not HDF5 or damaged), ``unsupported`` (no ``kspace`` dataset, not complex, rank not 3 or 4, a ``mask`` or
    target whose shape does not fit), ``too_few_slices`` (an empty slice axis), ``degenerate_geometry`` (an
    ISMRMRD header whose encoded or recon space gives a voxel size that is not finite, positive and
    plausible; see ``medrecon.io.grid``). A single slice is a volume of one slice.
    """
    with _open(path) as f:
        return _inspect(f)


def read_kspace_h5(path: str | Path) -> KSpaceData:
    """Read and validate a fastMRI file (k-space as complex64, mask and target as float32).

    Raises:
        RejectedInput: as ``inspect_kspace_h5``; ``truncated_file`` when the arrays cannot be read;
            ``non_finite_values`` when a k-space sample is NaN or infinite (through the inverse FFT one such
            sample spoils its whole slice; see ``medrecon.io.finite``). A target's NaN voxels are left to
            ``load_item``'s policy like any image's.
    """
    with _open(path) as f:
        info = _inspect(f)
        try:
            kspace = np.asarray(f["kspace"][()], dtype=np.complex64)
            mask = np.asarray(f["mask"][()], dtype=np.float32) if info.has_mask else None
            target = np.asarray(f[info.target_key][()], dtype=np.float32) if info.target_key else None
        except OSError as err:
            raise RejectedInput(Reason.TRUNCATED_FILE, f"array data could not be read ({err})") from err
    bad = int(kspace.size - np.count_nonzero(np.isfinite(kspace)))
    if bad:
        raise RejectedInput(
            Reason.NON_FINITE_VALUES,
            f"{bad} of {kspace.size} k-space samples are NaN or infinite; a k-space sample cannot be "
            "replaced without guessing, and the inverse FFT would spread it over its whole slice",
        )
    return KSpaceData(kspace=kspace, mask=mask, target=target, attrs_safe=dict(info.attrs_safe), info=info)


def kspace_volume(path: str | Path) -> Volume:
    """The image volume of a fastMRI file, as medrecon's ``Volume``.

    The ground truth (``reconstruction_rss`` / ``reconstruction_esc``) when the file has one; otherwise the
    root-sum-of-squares over coils of the centred, orthonormal 2D inverse FFT of each slice (the magnitude for
    single-coil), on the full ``(H, W)`` grid (not cropped; the readout oversampling stays). Axes are
    reordered to medrecon's ``(columns, rows, slices)``. The affine is diagonal with the spacing from the
    ISMRMRD header (field of view / matrix size; the slice spacing is the slab or slice thickness, gaps
    unknown) or 1 mm where the header is missing: fastMRI files carry no patient position, so world
    coordinates are nominal.

    Returns:
        ``Volume`` float32 ``(W, H, slices)`` (or the target's ``(w, h, slices)``), ``meta`` with
        ``source_format="h5"``, ``modality="MR"``, ``spacing``, ``kspace_h5`` (shape facts and safe
        attributes).
    """
    data = read_kspace_h5(path)
    info = data.info
    if data.target is not None:
        image = data.target
        source = info.target_key
    else:
        image = rss_image(data.kspace, multicoil=info.multicoil)
        source = "rss_ifft"
    array = np.ascontiguousarray(np.transpose(image, (2, 1, 0)), dtype=np.float32)
    spacing = info.volume_spacing
    affine = np.diag([*spacing, 1.0])
    meta = {
        "source_format": "h5",
        "modality": "MR",
        "spacing": spacing,
        "kspace_h5": {
            "image": source,
            "kspace_shape": list(info.kspace_shape),
            "multicoil": info.multicoil,
            "geometry": "ismrmrd_header" if (info.recon_spacing or info.encoded_spacing) else "unknown",
            "attrs": dict(info.attrs_safe),
        },
    }
    return Volume(array=array, affine=affine, meta=meta)


def rss_image(kspace: np.ndarray, *, multicoil: bool) -> np.ndarray:
    """Root-sum-of-squares magnitude of the centred orthonormal 2D inverse FFT, slice by slice.

    Args:
        kspace: ``(slices, H, W)`` or ``(slices, coils, H, W)`` complex.
        multicoil: whether axis 1 is the coil axis.

    Returns:
        float32 ``(slices, H, W)``.
    """
    out = np.empty((kspace.shape[0], *kspace.shape[-2:]), dtype=np.float32)
    for s in range(kspace.shape[0]):  # one slice at a time keeps memory at one slice's coil images
        k = np.asarray(kspace[s], dtype=np.complex64)
        img = np.fft.fftshift(
            np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), axes=(-2, -1), norm="ortho"), axes=(-2, -1)
        )
        mag2 = np.abs(img) ** 2
        out[s] = np.sqrt(mag2.sum(axis=0) if multicoil else mag2)
    return out


@contextlib.contextmanager
def _open(path: str | Path) -> Iterator[h5py.File]:
    """``h5py.File`` in read mode with HDF5 open errors turned into ``RejectedInput``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        if "truncated file" in str(err):
            raise RejectedInput(
                Reason.TRUNCATED_FILE, "the HDF5 file is shorter than its superblock says"
            ) from err
        raise RejectedInput(Reason.UNREADABLE, "not a readable HDF5 file") from err
    with f:
        yield f


def _inspect(f: h5py.File) -> KSpaceInfo:
    if "kspace" not in f or not isinstance(f["kspace"], h5py.Dataset):
        raise RejectedInput(Reason.UNSUPPORTED, "no 'kspace' dataset: not a fastMRI-layout file")
    ds = f["kspace"]
    if ds.dtype.kind != "c":
        raise RejectedInput(Reason.UNSUPPORTED, f"'kspace' has dtype {ds.dtype}; complex64 expected")
    shape = tuple(int(s) for s in ds.shape)
    if len(shape) not in (3, 4):
        raise RejectedInput(
            Reason.UNSUPPORTED,
            f"'kspace' has shape {shape}; (slices, H, W) or (slices, coils, H, W) expected",
        )
    if min(shape) < 1:
        raise RejectedInput(Reason.TOO_FEW_SLICES, f"'kspace' has an empty axis (shape {shape})")
    width = shape[-1]
    has_mask = "mask" in f
    if has_mask and tuple(f["mask"].shape) != (width,):
        raise RejectedInput(
            Reason.UNSUPPORTED,
            f"'mask' has shape {tuple(f['mask'].shape)}; ({width},) expected for this k-space",
        )
    target_key = next((k for k in TARGET_KEYS if k in f), None)
    target_shape = None
    if target_key is not None:
        tshape = tuple(int(s) for s in f[target_key].shape)
        if len(tshape) != 3 or tshape[0] != shape[0] or f[target_key].dtype.kind not in "fiu":
            raise RejectedInput(
                Reason.UNSUPPORTED,
                f"{target_key!r} has shape {tshape} and dtype {f[target_key].dtype}; "
                f"real ({shape[0]}, h, w) expected",
            )
        target_shape = (tshape[0], tshape[1], tshape[2])
    encoded, recon, recon_matrix = _header_geometry(f)
    return KSpaceInfo(
        kspace_shape=shape,
        multicoil=len(shape) == 4,
        has_mask=has_mask,
        target_key=target_key,
        target_shape=target_shape,
        attrs_safe=_safe_attrs(f.attrs),
        encoded_spacing=encoded,
        recon_spacing=recon,
        patient_key=_patient_key(f.attrs),
        recon_matrix=recon_matrix,
    )


def _patient_key(attrs: h5py.AttributeManager) -> str | None:
    value = attrs.get("patient_id")
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or str(value).strip() == "":
        return None
    return "s-" + hashlib.sha256(f"patient\0{value}".encode()).hexdigest()[:16]


def _safe_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SAFE_ATTRS:
        if key not in attrs:
            continue
        value = attrs[key]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (str, int, float, bool)):
            out[key] = value
    return out


def _header_geometry(
    f: h5py.File,
) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None, tuple[int, int, int] | None]:
    """(row mm, column mm, slice mm) for the encoded and recon grids and the recon matrix size from the
    ISMRMRD XML, or ``None``s."""
    if "ismrmrd_header" not in f:
        return None, None, None
    try:
        raw = f["ismrmrd_header"][()]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        root = ET.fromstring(text)
    except (OSError, ValueError, ET.ParseError, UnicodeDecodeError):
        return None, None, None
    encoded, recon = _space_spacing(root, "encodedSpace"), _space_spacing(root, "reconSpace")
    return encoded, recon, _space_matrix(root, "reconSpace")


def _space_matrix(root: ET.Element, space: str) -> tuple[int, int, int] | None:
    """``space``'s matrix size ``(x, y, z)``; ``None`` unless all three are positive integers."""
    sizes = []
    for axis in ("x", "y", "z"):
        node = root.find(f".//m:encoding/m:{space}/m:matrixSize/m:{axis}", _ISMRMRD_NS)
        try:
            value = float(node.text.strip()) if node is not None and node.text else float("nan")
        except ValueError:
            return None
        if not (np.isfinite(value) and value >= 1 and value == int(value)):
            return None
        sizes.append(int(value))
    return (sizes[0], sizes[1], sizes[2])


def _space_spacing(root: ET.Element, space: str) -> tuple[float, float, float] | None:
    """``space``'s voxel size (field of view / matrix size), ``None`` when the header does not give it.

    Raises:
        RejectedInput: ``degenerate_geometry`` when it gives one that is not a number, not finite, not
            positive or not plausible (``medrecon.io.grid``), e.g. a zero matrix size or field of view.
    """
    texts = {}
    for part in ("matrixSize", "fieldOfView_mm"):
        for axis in ("x", "y", "z"):
            node = root.find(f".//m:encoding/m:{space}/m:{part}/m:{axis}", _ISMRMRD_NS)
            if node is None or node.text is None:
                return None
            texts[part, axis] = node.text.strip()
    try:
        values = {key: float(text) for key, text in texts.items()}
    except ValueError as err:
        raise RejectedInput(
            Reason.DEGENERATE_GEOMETRY, f"the ISMRMRD header's {space} holds a non-number"
        ) from err
    # x is the readout (rows, H), y the phase encoding (columns, W), z the slice/slab
    with np.errstate(divide="ignore", invalid="ignore"):
        spacing = tuple(
            float(np.float64(values["fieldOfView_mm", a]) / np.float64(values["matrixSize", a]))
            for a in ("x", "y", "z")
        )
    check_spacing(spacing, f"the ISMRMRD header's {space} voxel size (field of view / matrix)")
    return (spacing[0], spacing[1], spacing[2])
