"""NIfTI-1/2 volumes: validated reading (header-only inspection or full) and atomic float32 writing.

Geometry rule (the same precedence as nibabel's ``get_best_affine`` minus its guess):

1. ``sform_code > 0``  -> the sform matrix (it can hold shears; tools that set both keep it authoritative);
2. else ``qform_code > 0`` -> the quaternion qform;
3. else -> rejected as ``missing_geometry``. nibabel would fall back to a pixdim-only "base" affine whose
   orientation is a guess; medrecon writes outputs with the source affine and refuses to invent one.

A chosen affine that is not finite or whose 3x3 part is (numerically) singular is rejected as
``invalid_geometry``.

Dimensions: the first three axes are space. A 4th axis of length 1 (and any further trailing length-1 axes) is
squeezed away; a real 4th dimension (time series, vector images) is rejected as ``unsupported``, because every
downstream stage expects one scalar 3D volume per item. Images with fewer than three axes, or with a spatial
axis of length 1 (a single slice), are rejected as ``too_few_slices``. Complex and RGB data are
``unsupported``.

Intensities: ``scl_slope`` / ``scl_inter`` are applied (nibabel does this); the array is returned as float32.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medrecon.io.atomic import atomic_path
from medrecon.io.errors import Reason, RejectedInput
from medrecon.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")

# NIfTI xform codes (nifti1.h): 1 scanner, 2 aligned, 3 talairach, 4 mni_152, 5 template.
XFORM_SCANNER = 1
_VALID_XFORM_CODES = (1, 2, 3, 4, 5)
_DESCRIP = b"medrecon"
_GZIP_CHUNK = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    """What the header says, validated, without the voxel data.

    Attributes:
        shape: ``(I, J, K)`` after squeezing trailing length-1 axes.
        spacing: voxel size in mm along the three array axes (column norms of ``affine``).
        affine: 4x4 float64 voxel -> RAS+ mm, chosen by the module's sform/qform rule.
        xform: ``"sform"`` or ``"qform"``: which header matrix ``affine`` came from.
        xform_code: that matrix's NIfTI code (1 scanner ... 5 template).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    xform: str
    xform_code: int


def is_nifti_path(path: str | Path) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def inspect_nifti(path: str | Path, *, verify_data: bool = True) -> NiftiHeader:
    """Validate a NIfTI file's header (geometry, dimensions, data type) without decoding voxels.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        verify_data: also check that the voxel data is complete: for ``.nii`` a file-size comparison; for
            ``.nii.gz`` the compressed stream is decompressed in 1 MiB chunks and discarded (constant memory,
            time proportional to the file), because a truncated gzip cannot be told apart otherwise.

    Raises:
        RejectedInput: ``unreadable``, ``truncated_file``, ``missing_geometry``, ``invalid_geometry``,
            ``unsupported`` or ``too_few_slices`` (see the module docstring).
    """
    path = Path(path)
    img = _load(path)
    info = _header_info(img)
    if verify_data:
        _verify_data(path, img)
    return info


def _header_info(img: nib.Nifti1Image | nib.Nifti2Image) -> NiftiHeader:
    header = img.header
    shape = _spatial_shape(tuple(int(s) for s in img.shape))
    if np.iscomplexobj(np.empty(0, header.get_data_dtype())) or header.get_data_dtype().fields is not None:
        raise RejectedInput(
            Reason.UNSUPPORTED, f"voxel type {header.get_data_dtype()} is not a real scalar (complex or RGB)"
        )
    affine, xform, code = _best_affine(header)
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
    if len(shape) < 3:
        raise RejectedInput(Reason.TOO_FEW_SLICES, f"a {len(shape)}D image is not a volume (shape {shape})")
    extra = shape[3:]
    if any(s != 1 for s in extra):
        raise RejectedInput(
            Reason.UNSUPPORTED,
            f"shape {shape}: a 4th (or higher) dimension longer than 1 (time series or vector image) is not "
            "supported; split it into 3D volumes first",
        )
    spatial = (shape[0], shape[1], shape[2])
    if min(spatial) < 2:
        raise RejectedInput(Reason.TOO_FEW_SLICES, f"spatial shape {spatial} has an axis with a single voxel")
    return spatial


def _best_affine(header: nib.Nifti1Header) -> tuple[np.ndarray, str, int]:
    sform, scode = header.get_sform(coded=True)
    if int(scode) > 0 and sform is not None:
        affine, xform, code = sform, "sform", int(scode)
    else:
        try:
            qform, qcode = header.get_qform(coded=True)
        except Exception as err:  # an impossible quaternion (b^2 + c^2 + d^2 > 1) raises in nibabel
            raise RejectedInput(Reason.INVALID_GEOMETRY, f"the qform quaternion is invalid ({err})") from err
        if int(qcode) <= 0 or qform is None:
            raise RejectedInput(
                Reason.MISSING_GEOMETRY,
                "sform_code and qform_code are both 0: the orientation is unknown (medrecon does not guess)",
            )
        affine, xform, code = qform, "qform", int(qcode)
    affine = np.asarray(affine, dtype=np.float64)
    _check_affine(affine, error=None, xform=xform)
    return affine, xform, code


def _check_affine(affine: np.ndarray, *, error: type[Exception] | None, xform: str = "affine") -> None:
    """Refuse non-finite or singular voxel->world matrices (``error=None``: raise ``RejectedInput``)."""
    problem = None
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        problem = f"the {xform} has non-finite entries"
    else:
        m = affine[:3, :3]
        norms = np.linalg.norm(m, axis=0)
        # relative test so that 0.1 mm and 10 mm voxels are judged alike
        if np.any(norms <= 0) or abs(np.linalg.det(m)) <= 1e-6 * float(np.prod(norms)):
            problem = f"the {xform} is singular (zero voxel size or collinear axes)"
    if problem is None:
        return
    if error is None:
        raise RejectedInput(Reason.INVALID_GEOMETRY, problem)
    raise error(problem)


def _verify_data(path: Path, img: nib.Nifti1Image | nib.Nifti2Image) -> None:
    header = img.header
    needed = int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    offset = int(header.get_data_offset())
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if size < offset + needed:
            raise RejectedInput(
                Reason.TRUNCATED_FILE, f"the file has {size} bytes but the header needs {offset + needed}"
            )
        return
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise RejectedInput(
            Reason.TRUNCATED_FILE, f"the gzip stream is incomplete or corrupt ({err})"
        ) from err
    if total < offset + needed:
        raise RejectedInput(
            Reason.TRUNCATED_FILE,
            f"the decompressed file has {total} bytes but the header needs {offset + needed}",
        )
