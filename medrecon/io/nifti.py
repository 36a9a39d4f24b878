"""NIfTI-1/2 volumes: validated reading (header-only inspection or full) and atomic float32 writing.

Geometry rule (the same precedence as nibabel's ``get_best_affine`` minus its guess):

1. ``sform_code > 0``  -> the sform matrix (it can hold shears; tools that set both keep it authoritative);
2. else ``qform_code > 0`` -> the quaternion qform;
3. else -> rejected as ``missing_geometry``. nibabel would fall back to a pixdim-only "base" affine whose
   orientation is a guess; medrecon writes outputs with the source affine and refuses to invent one.

A chosen affine that is not finite, (numerically) singular, or whose voxel sizes lie outside the plausible
range is rejected as ``degenerate_geometry`` (the rule of :mod:`medrecon.io.grid`); so is a qform chosen by
rule 2 whose ``pixdim[1..3]`` are not positive. The one case the rule cannot decide is also
``degenerate_geometry``: both codes above 0 *and equal* (the two matrices claim the same space) while the
qform differs from the qform the sform itself gives (same origin and voxel sizes, nearest rotation; a shear
that a quaternion cannot hold is no disagreement) by more than ``XFORM_AGREEMENT_VOXELS`` of the smallest
voxel at a corner of the volume. Tools split over such files (nibabel and FSL read the sform, ITK often the
qform), so any choice would be a guess. Codes that differ (a scanner qform beside a template sform) are two
spaces, and rule 1 applies.

Dimensions: the first three axes are space. A 4th axis of length 1 (and any further trailing length-1 axes) is
squeezed away; a real 4th dimension (time series, vector images) is rejected as ``unsupported``, because every
downstream stage expects one scalar 3D volume per item. A single 2D image is a volume of one slice: a 2D file
``(I, J)`` is read as ``(I, J, 1)``, and ``(I, J, 1)`` as it is (its affine from the header like any other).
A single voxel along the first or second axis (a line, not an image) is ``too_few_slices``. Complex and RGB
data are ``unsupported``.

Intensities: ``scl_slope`` / ``scl_inter`` are applied (nibabel does this); the array is returned as float32.
NaN/inf voxels are counted by ``inspect_nifti`` and handled by the policy of ``medrecon.io.finite``.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from medrecon.io.atomic import atomic_path
from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.finite import NonFinite, check_counts
from medrecon.io.grid import affine_problem, check_affine, check_spacing
from medrecon.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# NIfTI xform codes (nifti1.h): 1 scanner, 2 aligned, 3 talairach, 4 mni_152, 5 template.
XFORM_SCANNER = 1
_VALID_XFORM_CODES = (1, 2, 3, 4, 5)
_DESCRIP = b"medrecon"
_GZIP_CHUNK = 1 << 20
# an sform and a qform of one space agree when their corner voxels lie within this fraction of a voxel
XFORM_AGREEMENT_VOXELS = 0.1


@dataclass(frozen=True)
class NiftiHeader:
    """What the header says, validated, without the voxel data.

    Attributes:
        shape: ``(I, J, K)`` after squeezing trailing length-1 axes.
        spacing: voxel size in mm along the three array axes (column norms of ``affine``).
        affine: 4x4 float64 voxel -> RAS+ mm, chosen by the module's sform/qform rule.
        xform: ``"sform"`` or ``"qform"``: which header matrix ``affine`` came from.
        xform_code: that matrix's NIfTI code (1 scanner ... 5 template).
        nonfinite: NaN/+inf/-inf counts of the stored voxels (``inspect_nifti`` with ``verify_data``; zero for
            integer voxel types, which cannot hold them), ``None`` when the data was not read.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    xform: str
    xform_code: int
    nonfinite: NonFinite | None = None


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def inspect_nifti(path: str | Path, *, verify_data: bool = True) -> NiftiHeader:
    """Validate a NIfTI file's header (geometry, dimensions, data type) without decoding voxels.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        verify_data: also check that the voxel data is complete: for ``.nii`` a file-size comparison; for
            ``.nii.gz`` the compressed stream is decompressed in 1 MiB chunks and discarded (constant memory,
            time proportional to the file), because a truncated gzip cannot be told apart otherwise. Float
            voxels are counted for NaN/inf on the way (``.nii``: the data block is read in 1 MiB chunks), and
            the policy of ``medrecon.io.finite`` is checked (``nonfinite`` in the result).

    Raises:
        RejectedInput: ``unreadable``, ``truncated_file``, ``missing_geometry``, ``invalid_geometry``,
            ``degenerate_geometry``, ``unsupported``, ``too_few_slices`` (see the module docstring) or
            ``non_finite_values`` (+/-inf voxels, or no finite voxel).
    """
    path = Path(path)
    img = _load(path)
    info = _header_info(img)
    if verify_data:
        counts = _verify_data(path, img)
        check_counts(counts, int(np.prod(info.shape, dtype=np.int64)))
        info = replace(info, nonfinite=counts)
    return info


def _header_info(img: nib.Nifti1Image | nib.Nifti2Image) -> NiftiHeader:
    header = img.header
    shape = _spatial_shape(tuple(int(s) for s in img.shape))
    if np.iscomplexobj(np.empty(0, header.get_data_dtype())) or header.get_data_dtype().fields is not None:
        raise RejectedInput(
            Reason.UNSUPPORTED, f"voxel type {header.get_data_dtype()} is not a real scalar (complex or RGB)"
        )
    affine, xform, code = _best_affine(_geometry_header(img), shape)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return NiftiHeader(shape=shape, spacing=spacing, affine=affine, xform=xform, xform_code=code)


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI volume.

    Returns:
        ``Volume`` with ``array`` float32 ``(I, J, K)`` (scl_slope/scl_inter applied), ``affine`` voxel ->
        RAS+ mm (sform/qform rule above) and ``meta`` = ``{"source_format": "nifti", "modality": None,
        "spacing": (mm, mm, mm), "nifti": {"xform": "sform"|"qform", "xform_code": int}}`` (NIfTI does not
        record the modality).

    Raises:
        RejectedInput: as ``inspect_nifti``; a decode failure of the data is ``truncated_file`` or
            ``unreadable``.
    """
    path = Path(path)
    img = _load(path)
    info = _header_info(img)
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise RejectedInput(
            Reason.TRUNCATED_FILE, f"compressed voxel data is incomplete or corrupt ({err})"
        ) from err
    except OSError as err:  # nibabel: "Expected N bytes, got M bytes"
        raise RejectedInput(
            Reason.TRUNCATED_FILE, "the file holds fewer voxel bytes than its header says"
        ) from err
    except (ValueError, TypeError) as err:
        raise RejectedInput(
            Reason.UNREADABLE, f"voxel data could not be decoded ({type(err).__name__})"
        ) from err
    data = np.ascontiguousarray(data.reshape(info.shape), dtype=np.float32)
    meta = {
        "source_format": "nifti",
        "modality": None,
        "spacing": info.spacing,
        "nifti": {"xform": info.xform, "xform_code": info.xform_code},
    }
    return Volume(array=data, affine=info.affine, meta=meta)


def write_nifti(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` as a float32 NIfTI-1 file, atomically (temporary file beside ``path``, then rename).

    The volume's affine is stored as both the sform and the qform (the qform cannot hold shears; readers
    that follow the sform-first rule get the exact matrix). Both codes are the source's xform code when
    ``volume.meta["nifti"]["xform_code"]`` is set (a volume read from NIfTI keeps e.g. "MNI 152"), else
    1 (scanner anatomical: coordinates of a scanner-based source such as DICOM). The header is built fresh:
    ``descrip`` is ``"medrecon"`` and no free-text field of any source header is carried over; units are mm
    and seconds.

    Args:
        volume: 3D (or explicit 4D) array, any real dtype (cast to float32), finite 4x4 affine.
        path: destination ending in ``.nii.gz`` (gzip) or ``.nii``.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"NIfTI output must end in .nii.gz or .nii, got {path.name!r}")
    affine = np.asarray(volume.affine, dtype=np.float64)
    _check_affine(affine, error=ValueError)
    code = XFORM_SCANNER
    nifti_meta = volume.meta.get("nifti") if isinstance(volume.meta, dict) else None
    if isinstance(nifti_meta, dict) and nifti_meta.get("xform_code") in _VALID_XFORM_CODES:
        code = int(nifti_meta["xform_code"])
    array = np.asarray(volume.array, dtype=np.float32)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(array, affine, header=header)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    img.header["descrip"] = _DESCRIP
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def _load(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise RejectedInput(Reason.TRUNCATED_FILE, f"the header could not be read in full ({err})") from err
    except Exception as err:  # nibabel raises many types (ImageFileError, HeaderDataError, ValueError, ...)
        raise RejectedInput(Reason.UNREADABLE, f"not a readable NIfTI file ({type(err).__name__})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise RejectedInput(Reason.UNSUPPORTED, f"{type(img).__name__} is not a NIfTI image")
    return img


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) < 2:
        raise RejectedInput(Reason.TOO_FEW_SLICES, f"a {len(shape)}D array is not an image (shape {shape})")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise RejectedInput(
            Reason.UNSUPPORTED,
            f"shape {shape}: a 4th (or higher) dimension longer than 1 (time series or vector image) is not "
            "supported; split it into 3D volumes first",
        )
    spatial = (shape[0], shape[1], shape[2] if len(shape) > 2 else 1)
    if min(spatial[:2]) < 2 or spatial[2] < 1:
        raise RejectedInput(
            Reason.TOO_FEW_SLICES,
            f"spatial shape {spatial}: a single image must lie in the first two axes, (I, J) or (I, J, 1)",
        )
    return spatial


def _geometry_header(img: nib.Nifti1Image | nib.Nifti2Image) -> nib.Nifti1Header:
    """The loaded header with ``pixdim[1..3]`` as the file stores them.

    nibabel "fixes" a zero voxel size to 1 and a negative one to its absolute value while loading; that is a
    guess about the qform's grid, so the geometry rule judges the stored values instead.
    """
    header = img.header.copy()
    try:
        with img.file_map["image"].get_prepare_fileobj(mode="rb") as stream:  # .nii: one file
            stored = type(img.header).from_fileobj(stream, check=False)
        header["pixdim"][1:4] = stored["pixdim"][1:4]
    except Exception:  # noqa: BLE001 - the header was just read once; keep nibabel's values if not again
        pass
    return header


def _best_affine(header: nib.Nifti1Header, shape: tuple[int, int, int]) -> tuple[np.ndarray, str, int]:
    sform, scode = header.get_sform(coded=True)
    if int(scode) > 0 and sform is not None:
        affine, xform, code = np.asarray(sform, dtype=np.float64), "sform", int(scode)
        check_affine(affine, "sform")
        contradiction = _xform_contradiction(header, affine, code, shape)
        if contradiction is not None:
            raise RejectedInput(Reason.DEGENERATE_GEOMETRY, contradiction)
        return affine, xform, code
    if int(header["qform_code"]) <= 0:
        raise RejectedInput(
            Reason.MISSING_GEOMETRY,
            "sform_code and qform_code are both 0: the orientation is unknown (medrecon does not guess)",
        )
    check_spacing(header["pixdim"][1:4], "pixdim[1..3] (the qform's voxel size)")
    try:
        qform, qcode = header.get_qform(coded=True)
    except Exception as err:  # an impossible quaternion (b^2 + c^2 + d^2 > 1) raises in nibabel
        raise RejectedInput(Reason.INVALID_GEOMETRY, f"the qform quaternion is invalid ({err})") from err
    affine = np.asarray(qform, dtype=np.float64)
    check_affine(affine, "qform")
    return affine, "qform", int(qcode)


def _xform_contradiction(
    header: nib.Nifti1Header, sform: np.ndarray, code: int, shape: tuple[int, int, int]
) -> str | None:
    """Why a qform with the sform's own code contradicts the sform, or ``None`` (see the module docstring).

    The stored qform is compared with the qform the sform itself gives (nibabel's ``set_qform``: same origin
    and voxel sizes, the nearest rotation, so a shear that a quaternion cannot hold is no contradiction), at
    the centres of the volume's eight corner voxels.
    """
    if int(header["qform_code"]) != code:
        return None  # no qform, or one in another space (scanner vs template): the sform rule decides
    try:
        qform = np.asarray(header.get_qform(), dtype=np.float64)
    except Exception:  # noqa: BLE001 - an unusable qform in the sform's space contradicts it
        qform = np.full((4, 4), np.nan)
    expected_header = header.copy()
    expected_header.set_qform(sform, code=code)
    expected = np.asarray(expected_header.get_qform(), dtype=np.float64)
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    gap = float(np.max(np.linalg.norm((qform - expected)[:3] @ corners.T, axis=0)))
    tolerance = XFORM_AGREEMENT_VOXELS * float(np.min(np.linalg.norm(sform[:3, :3], axis=0)))
    if np.isfinite(gap) and gap <= tolerance:
        return None
    shown = "an unusable qform" if not np.isfinite(gap) else f"corners {gap:.3g} mm apart"
    return (
        f"sform and qform both have code {code} (the same space) but disagree ({shown}, tolerance "
        f"{tolerance:.3g} mm): tools differ on which to believe, so medrecon refuses to choose"
    )


def _check_affine(affine: np.ndarray, *, error: type[Exception], xform: str = "affine") -> None:
    """Refuse a non-finite or singular voxel->world matrix to be written (raises ``error``)."""
    problem = affine_problem(affine, xform)
    if problem is not None:
        raise error(problem)


def _verify_data(path: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> NonFinite:
    """Check the data block is complete; returns the NaN/inf counts of the (scaled) voxels."""
    header = img.header
    needed = int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    # nibabel resets the loaded header's vox_offset to 0; the array proxy keeps the file's real offset
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
    counter = _NonFiniteCounter(header.get_data_dtype(), offset, needed)
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if size < offset + needed:
            raise RejectedInput(
                Reason.TRUNCATED_FILE, f"the file has {size} bytes but the header needs {offset + needed}"
            )
        if counter.wanted:
            with open(path, "rb") as stream:
                stream.seek(offset)
                counter.skip = 0
                while counter.left > 0 and (chunk := stream.read(_GZIP_CHUNK)):
                    counter.feed(chunk)
        return counter.result(img)
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
                counter.feed(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise RejectedInput(
            Reason.TRUNCATED_FILE, f"the gzip stream is incomplete or corrupt ({err})"
        ) from err
    if total < offset + needed:
        raise RejectedInput(
            Reason.TRUNCATED_FILE,
            f"the decompressed file has {total} bytes but the header needs {offset + needed}",
        )
    return counter.result(img)


class _NonFiniteCounter:
    """Counts NaN/inf voxels of a data block fed as consecutive byte chunks of the file.

    Only float voxel types can hold them (``wanted``); the first ``skip`` bytes (header and extensions) and
    anything after the ``left`` data bytes are ignored, and a voxel split across two chunks is carried over.
    """

    def __init__(self, dtype: np.dtype, skip: int, left: int) -> None:
        self.dtype = np.dtype(dtype)
        self.wanted = np.issubdtype(self.dtype, np.floating)
        self.skip, self.left = skip, left
        self.carry = b""
        self.counts = NonFinite()

    def feed(self, chunk: bytes) -> None:
        if not self.wanted or self.left <= 0:
            return
        if self.skip:
            dropped = min(self.skip, len(chunk))
            chunk, self.skip = chunk[dropped:], self.skip - dropped
        chunk = chunk[: self.left]
        self.left -= len(chunk)
        data = self.carry + chunk if self.carry else chunk
        usable = len(data) - len(data) % self.dtype.itemsize
        voxels = np.frombuffer(data, dtype=self.dtype, count=usable // self.dtype.itemsize)
        self.counts += NonFinite.count(voxels)
        self.carry = data[usable:]

    def result(self, img: nib.Nifti1Image | nib.Nifti2Image) -> NonFinite:
        """The counts after ``scl_slope`` as nibabel applies it (a negative slope turns +inf into -inf)."""
        slope = float(getattr(img.dataobj, "slope", 1.0))
        return self.counts.swapped_signs() if slope < 0 else self.counts
