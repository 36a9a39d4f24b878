"""Write a volume as a DICOM series: one single-frame image per k-slice, geometry from the affine.

The series is placed in the source's study when it can be: with a ``source`` volume read from DICOM
(``source.meta["dicom"]``), the new series keeps the source's StudyInstanceUID and FrameOfReferenceUID (the
reconstruction lives in the same patient coordinates) and references the source images. Everything else is new
(SeriesInstanceUID, SOPInstanceUIDs). medrecon never stores patient identifiers, so PatientName, PatientID and
the other type-2 patient/study attributes are written *empty*: a PACS has to link the derived series to the
patient through the StudyInstanceUID (most do; some require a patient match and will need the identifiers
re-inserted by a local tool before import).

Storage class: MR Image Storage for ``MR``, CT Image Storage for ``CT``, Secondary Capture otherwise.

Pixels: ``uint16`` (or ``int16``) with RescaleSlope/RescaleIntercept chosen from the data range so nothing is
clipped. Integer-valued data that fits 16 bits is stored exactly (slope 1, intercept 0). Anything else is
mapped linearly onto 65000 of the 65536 levels (a 100-level margin at each end absorbs the decimal rounding of
the DS-encoded slope and intercept): the largest quantisation error is ``slope / 2 = (max - min) / 130000``
(about 7.7e-6 of the data range), plus a negligible ``|intercept| * 1e-13`` from the 16-character decimal
encoding.

Geometry (voxel ``(i, j, k)`` = (column, row, slice), the affine maps it to RAS mm; DICOM is LPS):
ImageOrientationPatient = the LPS directions of ``i`` and ``j``; ImagePositionPatient of slice ``k`` = LPS of
``affine @ (0, 0, k, 1)``; PixelSpacing = (row spacing, column spacing) = ``(|a_j|, |a_i|)``; SliceThickness
and SpacingBetweenSlices = the slice step along the plane normal. The in-plane axes must be orthogonal (a
DICOM image plane cannot be sheared); the slice axis may be oblique (positions carry it exactly).

Files are named ``slice_0001.dcm``, ``slice_0002.dcm``, ... in ``k`` order (never from tag text), each written
atomically (temporary file in the same folder, then ``os.replace``), with a zeroed 128-byte preamble and
Explicit VR Little Endian file meta.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medrecon import __version__
from medrecon.io.atomic import atomic_path
from medrecon.volume import Volume

SOP_CLASSES = {"MR": MRImageStorage, "CT": CTImageStorage}
_LPS = np.diag([-1.0, -1.0, 1.0])
_LEVELS = 65000  # of 65536: the rest is margin for the decimal rounding of slope and intercept
_MARGIN = 100
_SLICE_NAME = re.compile(r"^slice_\d+\.dcm$")
_MAX_LO = 64  # VR LO length


@dataclass(frozen=True)
class PixelEncoding:
    """How float voxels become stored integers: ``value = stored * slope + intercept``.

    Attributes:
        dtype: ``uint16`` or ``int16``.
        slope, intercept: exactly the values written (after decimal-string rounding).
        max_error: the largest absolute round-trip error in the data's units (0 for lossless).
    """

    dtype: np.dtype
    slope: float
    intercept: float
    max_error: float

    def encode(self, values: np.ndarray) -> np.ndarray:
        stored = np.rint((values.astype(np.float64) - self.intercept) / self.slope)
        info = np.iinfo(self.dtype)
        # the margins make this a no-op; it guards the dtype cast against any residual rounding
        return np.clip(stored, info.min, info.max).astype(self.dtype)


def choose_encoding(array: np.ndarray) -> PixelEncoding:
    """Pick the 16-bit storage for ``array`` (finite values; see the module docstring for the rule)."""
    values = np.asarray(array)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("a DICOM series needs a non-empty volume of finite values")
    lo, hi = float(values.min()), float(values.max())
    if np.all(values == np.rint(values)):
        if lo >= 0 and hi <= 65535:
            return PixelEncoding(np.dtype(np.uint16), 1.0, 0.0, 0.0)
        if lo >= -32768 and hi <= 32767:
            return PixelEncoding(np.dtype(np.int16), 1.0, 0.0, 0.0)
    slope = (hi - lo) / _LEVELS if hi > lo else 1.0
    slope = float(format_number_as_ds(slope))
    intercept = float(format_number_as_ds(lo - _MARGIN * slope))
    max_error = slope / 2 + abs(intercept) * 1e-13
    return PixelEncoding(np.dtype(np.uint16), slope, intercept, max_error)


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    series_description: str = "medrecon",
    source: Volume | None = None,
    modality: str | None = None,
    series_number: int = 1001,
    derived: bool = True,
    patient_name: str = "",
    patient_id: str = "",
    uid_seed: str | None = None,
) -> list[Path]:
    """Write ``volume`` as a DICOM series into ``out_dir``; returns the file paths in slice (``k``) order.

    Args:
        volume: float array ``(I, J, K)`` = (columns, rows, slices), finite; affine voxel -> RAS mm whose
            first two columns are orthogonal.
        out_dir: the series folder (created). Files from an earlier write named ``slice_<n>.dcm`` that this
            write does not replace are removed after the new series is complete, so the folder holds one
            series.
        series_description: SeriesDescription (at most 64 characters).
        source: the volume this one was computed from. When it has ``meta["dicom"]`` (a DICOM read), the study
            and frame of reference are kept; each slice references the source image it corresponds to when the
            two grids share their slices (same count, same planes: ReferencedImageSequence and
            SourceImageSequence), otherwise the source series as a whole (ReferencedSeriesSequence).
        modality: ``"MR"``, ``"CT"`` or another DICOM modality code; default ``volume.meta["modality"]``, then
            ``source.meta["modality"]``, then ``"OT"`` (Secondary Capture).
        series_number: SeriesNumber.
        derived: ImageType ``DERIVED\\SECONDARY`` (a reconstruction) or ``ORIGINAL\\PRIMARY``.
        patient_name, patient_id: normally empty (medrecon does not know them); the bundled demo series uses
            anonymous placeholders.
        uid_seed: when given, every new UID is derived from it (same seed -> same UIDs); default: random UIDs.

    Returns:
        ``[out_dir / "slice_0001.dcm", ...]``.
    """
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"a DICOM series is written from a 3D volume, got shape {array.shape}")
    if len(series_description) > _MAX_LO:
        raise ValueError(
            f"series_description must be at most {_MAX_LO} characters, got {len(series_description)}"
        )
    geometry = _SliceGeometry.from_affine(volume.affine, array.shape[2])
    encoding = choose_encoding(array)
    modality = (
        modality or volume.meta.get("modality") or (source.meta.get("modality") if source else None) or "OT"
    )
    modality = str(modality).upper()
    sop_class = SOP_CLASSES.get(modality, SecondaryCaptureImageStorage)

    src = dict(source.meta.get("dicom") or {}) if source is not None else {}
    uid = _UidMaker(uid_seed)
    study_uid = src.get("study_uid") or uid("study")
    for_uid = src.get("frame_of_reference_uid") or uid("frame_of_reference")
    series_uid = uid("series")
    per_slice_refs = (
        source is not None
        and len(src.get("sop_instance_uids") or []) == geometry.count
        and bool(src.get("sop_class_uid"))
        and geometry.same_slices(_SliceGeometry.from_affine(source.affine, source.array.shape[2]))
    )
    now = _dt.datetime.now()
    common = _series_dataset(
        modality=modality,
        sop_class=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        for_uid=for_uid,
        series_number=series_number,
        series_description=series_description,
        derived=derived,
        patient_name=patient_name,
        patient_id=patient_id,
        geometry=geometry,
        encoding=encoding,
        array=array,
        now=now,
    )
    if src.get("series_uid") and not per_slice_refs:
        ref = Dataset()
        ref.SeriesInstanceUID = src["series_uid"]
        common.ReferencedSeriesSequence = [ref]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(geometry.count)))
    paths = []
    for k in range(geometry.count):
        ds = _slice_dataset(common, k, geometry, encoding, array[:, :, k], uid(f"instance-{k}"), sop_class)
        if per_slice_refs:
            frame = (src.get("frame_numbers") or [None] * geometry.count)[k]  # multi-frame source
            ds.ReferencedImageSequence = [
                _image_ref(src["sop_class_uid"], src["sop_instance_uids"][k], frame)
            ]
            ds.SourceImageSequence = [_image_ref(src["sop_class_uid"], src["sop_instance_uids"][k], frame)]
        path = out_dir / f"slice_{k + 1:0{width}d}.dcm"
        with atomic_path(path) as tmp:
            _save(ds, tmp)
        paths.append(path)
    written = {p.name for p in paths}
    for stale in out_dir.iterdir():
        if _SLICE_NAME.match(stale.name) and stale.name not in written and stale.is_file():
            stale.unlink()
    return paths


@dataclass(frozen=True)
class _SliceGeometry:
    """DICOM plane geometry of the ``count`` slices of an affine (LPS mm)."""

    row_cosines: np.ndarray  # direction of increasing column index i
    col_cosines: np.ndarray  # direction of increasing row index j
    positions: np.ndarray  # (count, 3) ImagePositionPatient
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_step: float  # along the plane normal
    normal: np.ndarray
    count: int

    @classmethod
    def from_affine(cls, affine: np.ndarray, count: int) -> _SliceGeometry:
        affine = np.asarray(affine, dtype=np.float64)
        if not np.all(np.isfinite(affine)):
            raise ValueError("the volume's affine has non-finite entries")
        m = _LPS @ affine[:3, :3]
        origin = _LPS @ affine[:3, 3]
        di, dj = np.linalg.norm(m[:, 0]), np.linalg.norm(m[:, 1])
        if di <= 0 or dj <= 0:
            raise ValueError("the volume's affine has a zero in-plane voxel size")
        row, col = m[:, 0] / di, m[:, 1] / dj
        if abs(float(row @ col)) > 1e-4:
            raise ValueError(
                "the volume's in-plane axes are not orthogonal; a DICOM image plane cannot be sheared"
            )
        normal = np.cross(row, col)
        step = abs(float(m[:, 2] @ normal))
        if step <= 0:
            raise ValueError("the volume's slice axis lies in the image plane")
        positions = origin[None, :] + np.arange(count)[:, None] * m[:, 2][None, :]
        return cls(row, col, positions, (float(dj), float(di)), step, normal, count)

    def same_slices(self, other: _SliceGeometry, tol_mm: float = 1e-3) -> bool:
        """Same number of slices lying in the same planes (in-plane sampling may differ)."""
        if self.count != other.count or abs(abs(float(self.normal @ other.normal)) - 1) > 1e-6:
            return False
        return bool(
            np.allclose(self.positions @ self.normal, other.positions @ self.normal, atol=tol_mm, rtol=0)
        )


class _UidMaker:
    """New UIDs: random, or derived from a seed so that repeated writes give the same UIDs."""

    def __init__(self, seed: str | None) -> None:
        self.seed = seed

    def __call__(self, role: str) -> str:
        if self.seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[self.seed, role])


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _series_dataset(
    *,
    modality: str,
    sop_class: str,
    study_uid: str,
    series_uid: str,
    for_uid: str,
    series_number: int,
    series_description: str,
    derived: bool,
    patient_name: str,
    patient_id: str,
    geometry: _SliceGeometry,
    encoding: PixelEncoding,
    array: np.ndarray,
    now: _dt.datetime,
) -> Dataset:
    """The attributes every slice shares."""
    ds = Dataset()
    text = series_description + patient_name + patient_id
    if not text.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = sop_class
    image_type = ["DERIVED", "SECONDARY"] if derived else ["ORIGINAL", "PRIMARY"]
    if modality == "CT":
        image_type.append("AXIAL")  # CT Image IOD: value 3 is AXIAL or LOCALIZER
    ds.ImageType = image_type
    # Patient and study: type-2 attributes present and empty (medrecon does not know them)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # Series and equipment
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.Manufacturer = "medrecon"
    ds.SoftwareVersions = f"medrecon {__version__}"
    if derived:
        ds.DerivationDescription = "reconstructed by medrecon"
    if sop_class == SecondaryCaptureImageStorage:
        ds.ConversionType = "WSD"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    if modality in SOP_CLASSES:
        ds.PatientPosition = ""
    if modality == "MR":
        ds.ScanningSequence = "RM"  # research mode: no acquisition sequence applies to a computed image
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        ds.RepetitionTime = ""
    if modality == "CT":
        ds.KVP = ""
        ds.AcquisitionNumber = ""
    # Image plane (shared part)
    ds.ImageOrientationPatient = [_ds(v) for v in (*geometry.row_cosines, *geometry.col_cosines)]
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
    ds.SliceThickness = _ds(geometry.slice_step)
    ds.SpacingBetweenSlices = _ds(geometry.slice_step)
    # Image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = int(array.shape[1])
    ds.Columns = int(array.shape[0])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if encoding.dtype == np.int16 else 0
    ds.RescaleSlope = _ds(encoding.slope)
    ds.RescaleIntercept = _ds(encoding.intercept)
    lo, hi = float(np.min(array)), float(np.max(array))
    ds.WindowCenter = _ds((lo + hi) / 2)
    ds.WindowWidth = _ds(max(hi - lo, 1e-6))
    return ds


def _slice_dataset(
    common: Dataset,
    k: int,
    geometry: _SliceGeometry,
    encoding: PixelEncoding,
    plane: np.ndarray,
    sop_uid: str,
    sop_class: str,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MEDRECON_{__version__}"[:16]
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\x00" * 128)
    ds.update(common)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    position = geometry.positions[k]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ geometry.normal))
    # (I, J) column-major voxels -> (rows, columns) pixels, little-endian
    pixels = encoding.encode(np.ascontiguousarray(plane.T))
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    return ds


def _image_ref(sop_class_uid: str, sop_instance_uid: str, frame_number: int | None = None) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class_uid
    ref.ReferencedSOPInstanceUID = sop_instance_uid
    if frame_number is not None:
        ref.ReferencedFrameNumber = int(frame_number)
    return ref


def _save(ds: FileDataset, path: Path) -> None:
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    else:  # pydicom 2.4
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)


def slice_positions(volume: Volume) -> np.ndarray:
    """ImagePositionPatient (LPS mm) of each k-slice of ``volume``, ``(K, 3)``: what the writer stores."""
    return _SliceGeometry.from_affine(volume.affine, volume.array.shape[2]).positions.copy()


__all__ = ["PixelEncoding", "choose_encoding", "slice_positions", "write_dicom_series"]
