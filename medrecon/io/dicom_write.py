"""Write a volume as a DICOM series: one single-frame image per k-slice, geometry from the affine.

Identity (``identity``, see :mod:`medrecon.io.dicom_identity`): with a ``source`` volume read from DICOM
(``source.meta["dicom"]``) and ``identity="source"`` (the default), the new series keeps the source's
StudyInstanceUID and FrameOfReferenceUID (the reconstruction lives in the same patient coordinates), references
the source images, and copies the Patient and General Study attributes from ``source_header`` (one source file,
read again at write time: ``Volume.meta`` carries no patient data). ``identity="empty"`` is a research export:
empty patient and study attributes, new Study and Frame of Reference UIDs, no reference to a source UID,
PatientIdentityRemoved ``YES``. Everything else is always new (SeriesInstanceUID, SOPInstanceUIDs).

Storage class: MR Image Storage for ``MR``, CT Image Storage for ``CT``, Secondary Capture otherwise.

Pixels: ``uint16`` (or ``int16``) chosen from the data range so nothing is clipped. Integer-valued data that
fits 16 bits is stored exactly. Anything else is mapped linearly onto 65000 of the 65536 levels (a 100-level
margin at each end absorbs the decimal rounding of the DS-encoded slope and intercept): the largest
quantisation error is ``slope / 2 = (max - min) / 130000`` (about 7.7e-6 of the data range), plus a negligible
``|intercept| * 1e-13`` from the 16-character decimal encoding. The map ``value = stored * slope + intercept``
is written

- for CT (and Secondary Capture) as RescaleSlope/RescaleIntercept (the Modality LUT, which the CT IOD
  requires; RescaleType ``HU`` for CT, ``US`` -- unspecified -- otherwise);
- for MR as one linear item of the Real World Value Mapping Sequence (0040,9096), units "no units" (UCUM
  ``1``): the MR Image IOD has no Modality LUT, and viewers that apply RescaleSlope to MR window it wrongly.
  An MR viewer shows the stored values (proportional to the reconstruction); quantitative readers (medrecon's
  own reader, :mod:`medrecon.io.dicom_header`) apply the mapping. Lossless integer MR carries no mapping.

The window (WindowCenter/WindowWidth, the data range) is in the units the VOI LUT sees: HU after the Modality
LUT for CT, stored values for MR.

Geometry (voxel ``(i, j, k)`` = (column, row, slice), the affine maps it to RAS mm; DICOM is LPS):
ImageOrientationPatient = the LPS directions of ``i`` and ``j``; ImagePositionPatient of slice ``k`` = LPS of
``affine @ (0, 0, k, 1)``; PixelSpacing = (row spacing, column spacing) = ``(|a_j|, |a_i|)``; SliceThickness
(and SpacingBetweenSlices for MR, the only IOD of the three that has it) = the slice step along the plane
normal. The in-plane axes must be orthogonal (a DICOM image plane cannot be sheared); the slice axis may be
oblique (positions carry it exactly).

References to the source (``identity="source"``): each slice lists the source images it was computed from in
SourceImageSequence -- the image in the same plane when both grids share their planes (then also in
ReferencedImageSequence), else the images within one source slice step of its plane (every source image when
the planes are not parallel) -- and the same instances in the Common Instance Reference module
(ReferencedSeriesSequence > ReferencedInstanceSequence).

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
from pydicom.multival import MultiValue
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import PersonName, format_number_as_ds

from medrecon import __version__
from medrecon.io.atomic import atomic_path
from medrecon.io.dicom_identity import (
    CONTEXT_KEYWORDS,
    IDENTITY_KEYWORDS,
    REQUIRED_EMPTY,
    check_identity_mode,
    read_source_header,
)
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

    @property
    def lossless(self) -> bool:
        """Stored values are the values (integer data, slope 1, intercept 0)."""
        return self.slope == 1.0 and self.intercept == 0.0 and self.max_error == 0.0

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
    source_header: str | Path | None = None,
    identity: str = "source",
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
        source: the volume this one was computed from. When it has ``meta["dicom"]`` (a DICOM read) and
            ``identity="source"``, the study and frame of reference are kept and the source images referenced
            (see the module docstring).
        source_header: one file of the source series; its patient and study attributes are copied
            (``identity="source"``) and its body part, laterality and patient position in both modes. Without
            it the patient and study attributes are written empty.
        identity: ``"source"`` or ``"empty"`` (:data:`medrecon.io.dicom_identity.IDENTITY_MODES`).
        modality: ``"MR"``, ``"CT"`` or another DICOM modality code; default ``volume.meta["modality"]``, then
            ``source.meta["modality"]``, then ``"OT"`` (Secondary Capture).
        series_number: SeriesNumber.
        derived: ImageType ``DERIVED\\SECONDARY`` (a reconstruction) or ``ORIGINAL\\PRIMARY``.
        patient_name, patient_id: used when no ``source_header`` is given (the bundled demo series uses
            anonymous placeholders); ignored with ``identity="empty"``.
        uid_seed: when given, every new UID is derived from it (same seed -> same UIDs); default: random UIDs.

    Returns:
        ``[out_dir / "slice_0001.dcm", ...]``.

    Raises:
        ValueError: a volume that cannot be written, an unknown ``identity``, or a ``source_header`` that cannot
            be read or belongs to another series.
    """
    check_identity_mode(identity)
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

    known = dict(source.meta.get("dicom") or {}) if source is not None else {}
    src = known if identity == "source" else {}  # "empty": nothing links back to the source's study
    header = (
        read_source_header(
            source_header, series_uid=known.get("series_uid"), study_uid=known.get("study_uid")
        )
        if source_header is not None
        else None
    )
    uid = _UidMaker(uid_seed)
    study_uid = src.get("study_uid") or uid("study")
    for_uid = src.get("frame_of_reference_uid") or uid("frame_of_reference")
    series_uid = uid("series")
    common = _series_dataset(
        modality=modality,
        sop_class=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        for_uid=for_uid,
        series_number=series_number,
        series_description=series_description,
        derived=derived,
        geometry=geometry,
        encoding=encoding,
        array=array,
        now=_dt.datetime.now(),
    )
    _identity(common, header, identity, patient_name, patient_id)
    if not all(_is_ascii(elem.value) for elem in common.iterall()):
        common.SpecificCharacterSet = "ISO_IR 192"
    refs = _source_references(src, source, geometry) if source is not None else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(geometry.count)))
    paths = []
    for k in range(geometry.count):
        ds = _slice_dataset(common, k, geometry, encoding, array[:, :, k], uid(f"instance-{k}"), sop_class)
        if refs is not None:
            refs.add_to(ds, k)
        path = out_dir / f"slice_{k + 1:0{width}d}.dcm"
        with atomic_path(path) as tmp:
            _save(ds, tmp)
        paths.append(path)
    written = {p.name for p in paths}
    for stale in out_dir.iterdir():
        if _SLICE_NAME.match(stale.name) and stale.name not in written and stale.is_file():
            stale.unlink()
    return paths


def _is_ascii(value: object) -> bool:
    if isinstance(value, (list, tuple, MultiValue)):
        return all(_is_ascii(v) for v in value)
    return not isinstance(value, (str, PersonName)) or str(value).isascii()


def _identity(ds: Dataset, header: Dataset | None, identity: str, patient_name: str, patient_id: str) -> None:
    """Patient and study attributes (copied, placeholders, or empty) and the anatomical context, into ``ds``."""
    for keyword in CONTEXT_KEYWORDS:
        if header is not None and keyword in header:
            ds[keyword] = header[keyword]
    if "Laterality" not in ds and "BodyPartExamined" not in ds:
        # type 2C, for a paired body part: present and empty ("unknown") when the body part is not known;
        # with a known body part the source's choice stands (absent for an unpaired one)
        ds.Laterality = ""
    if identity == "source" and header is not None:
        for keyword in IDENTITY_KEYWORDS:
            if keyword in header:
                ds[keyword] = header[keyword]
    elif identity == "source":
        ds.PatientName, ds.PatientID = patient_name, patient_id
    for keyword in REQUIRED_EMPTY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if identity == "empty":
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "medrecon dicom_identity=empty"  # LO: at most 64 characters


@dataclass(frozen=True)
class _SourceReferences:
    """The source images each output slice was computed from (indices into the source's slice order)."""

    series_uid: str
    sop_class_uid: str
    sop_instance_uids: list[str]
    frame_numbers: list[int | None]
    per_slice: list[list[int]]
    same_planes: bool

    def add_to(self, ds: Dataset, k: int) -> None:
        """SourceImageSequence (and ReferencedImageSequence for a shared plane) and the Common Instance
        Reference module of output slice ``k``."""

        def images() -> list[Dataset]:  # new items for each sequence: pydicom items belong to one sequence
            return [
                _image_ref(self.sop_class_uid, self.sop_instance_uids[j], self.frame_numbers[j])
                for j in self.per_slice[k]
            ]

        ds.SourceImageSequence = images()
        if self.same_planes:
            ds.ReferencedImageSequence = images()
        instances = dict.fromkeys(self.sop_instance_uids[j] for j in self.per_slice[k])
        series = Dataset()
        series.SeriesInstanceUID = self.series_uid
        series.ReferencedInstanceSequence = [_image_ref(self.sop_class_uid, uid) for uid in instances]
        ds.ReferencedSeriesSequence = [series]


def _source_references(src: dict, source: Volume, geometry: _SliceGeometry) -> _SourceReferences | None:
    """What each slice references, or None when the source's image UIDs are not known (or not kept)."""
    uids = list(src.get("sop_instance_uids") or [])
    count = np.asarray(source.array).shape[2]
    if not (src.get("series_uid") and src.get("sop_class_uid")) or len(uids) != count:
        return None
    source_geometry = _SliceGeometry.from_affine(source.affine, count)
    frames = list(src.get("frame_numbers") or [None] * len(uids))  # a multi-frame source: 1-based numbers
    same = geometry.same_slices(source_geometry)
    per_slice = [[k] for k in range(geometry.count)] if same else geometry.nearby_slices(source_geometry)
    return _SourceReferences(src["series_uid"], src["sop_class_uid"], uids, frames, per_slice, same)


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

    def nearby_slices(self, source: _SliceGeometry, tol_mm: float = 1e-3) -> list[list[int]]:
        """For each slice, the ``source`` slices it draws on: those closer to its plane than one source step
        (or half its own step, for a coarser grid), else the nearest one; all of them when the planes are not
        parallel."""
        if abs(abs(float(self.normal @ source.normal)) - 1) > 1e-6:
            return [list(range(source.count)) for _ in range(self.count)]
        depth = source.positions @ self.normal
        reach = max(source.slice_step, self.slice_step / 2) - tol_mm
        nearby = []
        for z in self.positions @ self.normal:
            distance = np.abs(depth - z)
            near = np.flatnonzero(distance < reach)
            nearby.append(near.tolist() if near.size else [int(np.argmin(distance))])
        return nearby


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
    geometry: _SliceGeometry,
    encoding: PixelEncoding,
    array: np.ndarray,
    now: _dt.datetime,
) -> Dataset:
    """The attributes every slice shares (identity and references are added by the caller)."""
    ds = Dataset()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = sop_class
    image_type = ["DERIVED", "SECONDARY"] if derived else ["ORIGINAL", "PRIMARY"]
    if modality == "CT":
        image_type.append("AXIAL")  # CT Image IOD: value 3 is AXIAL or LOCALIZER
    elif modality == "MR":
        image_type.append("OTHER")  # MR Image IOD: value 3 is required; none of its specific terms applies
    ds.ImageType = image_type
    ds.StudyInstanceUID = study_uid
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
        ds.PatientOrientation = ""  # type 2C: the SC IOD has no image plane module (ours is an extension)
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    if modality in SOP_CLASSES:
        ds.PatientPosition = ""  # type 2C for CT and MR; the source's value replaces it when known
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
    if modality == "MR":
        ds.SpacingBetweenSlices = _ds(geometry.slice_step)  # in the MR Image module only
    # Image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = int(array.shape[1])
    ds.Columns = int(array.shape[0])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if encoding.dtype == np.int16 else 0
    lo, hi = float(np.min(array)), float(np.max(array))
    if modality == "MR":
        if not encoding.lossless:
            ds.RealWorldValueMappingSequence = [_real_world_value_mapping(encoding)]
        # the VOI LUT of an image without a Modality LUT works on stored values
        lo, hi = (float(v) for v in encoding.encode(np.array([lo, hi])))
    else:
        ds.RescaleSlope = _ds(encoding.slope)
        ds.RescaleIntercept = _ds(encoding.intercept)
        ds.RescaleType = "HU" if modality == "CT" else "US"  # US: unspecified units
    ds.WindowCenter = _ds((lo + hi) / 2)
    ds.WindowWidth = _ds(max(hi - lo, 1e-6))
    return ds


def _real_world_value_mapping(encoding: PixelEncoding) -> Dataset:
    """One linear Real World Value Mapping item for 16-bit unsigned stored values (PS3.3 C.7.6.16.2.11)."""
    if encoding.dtype != np.uint16:
        raise ValueError("a scaled encoding is stored unsigned")  # choose_encoding never does otherwise
    units = Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "1", "UCUM", "no units"
    item = Dataset()
    item.add_new("RealWorldValueFirstValueMapped", "US", 0)
    item.add_new("RealWorldValueLastValueMapped", "US", 65535)
    item.RealWorldValueIntercept = float(encoding.intercept)
    item.RealWorldValueSlope = float(encoding.slope)
    item.LUTExplanation = "medrecon reconstruction, in the source's intensity units"
    item.LUTLabel = "MEDRECON"
    item.MeasurementUnitsCodeSequence = [units]
    return item


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
