"""Synthetic DICOM files for tests: tiny images with known geometry and values, written with pydicom.

Plain functions that write real DICOM Part 10 files into a folder the caller owns (a pytest ``tmp_path``) and
return what a correct reader must produce, so tests compare with analytic answers rather than stored fixtures.

Conventions (DICOM patient space, LPS mm):

- ``shape`` is ``(columns, rows, slices)`` and ``spacing`` is ``(column spacing, row spacing, slice
  spacing)``, the Volume axis order ``(i, j, k)``; PixelSpacing is written as ``[spacing[1], spacing[0]]``.
- ``iop`` is ImageOrientationPatient (row direction cosines, then column direction cosines); slices are laid
  out from ``origin`` along ``normal = row x column`` at ``offsets`` (default ``k * spacing[2]``), plus
  ``k * shift``.
- Numbers are written as DICOM decimal strings; every expected value (affine, positions) is computed from the
  values *as written*, so rounding to 16 characters never shows up as a reader error.
- ``expected`` is the float32 ``(columns, rows, slices)`` array a reader must return: stored values times
  RescaleSlope plus RescaleIntercept, per slice, with the slice axis ascending along the normal.

No patient data: names and IDs are fixed dummy strings.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MediaStorageDirectoryStorage,
    MRImageStorage,
    RLELossless,
    RTStructureSetStorage,
    SegmentationStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

NON_IMAGE_KINDS = ("sr", "rtstruct", "presentation_state", "kos", "pdf", "seg", "dicomdir", "no_pixels")
NOT_DICOM_KINDS = ("random", "text", "empty")

Edit = Callable[[Dataset, int], None]


@dataclass
class SynthSeries:
    """What was written and what a reader must return.

    Attributes:
        folder: where the files are.
        paths: the files in slice order ``k`` (one file for an enhanced image), whatever their names.
        stored: ``(slices, rows, columns)`` stored integer values in slice order.
        expected: ``(columns, rows, slices)`` float32 physical values (after rescale) in slice order.
        affine: ``(4, 4)`` voxel ``(i, j, k)`` -> RAS mm, from the values as written.
        positions: ``(slices, 3)`` ImagePositionPatient as written (LPS mm), slice order.
        iop: ImageOrientationPatient as written.
        pixel_spacing: PixelSpacing as written ``(row spacing, column spacing)``.
        series_uid, study_uid, frame_of_reference_uid: the UIDs written.
        sop_uids: SOPInstanceUIDs in slice order (one for an enhanced image).
        frame_indices: for an enhanced image, the 0-based frame index in the file of each slice ``k``.
    """

    folder: Path
    paths: list[Path]
    stored: np.ndarray
    expected: np.ndarray
    affine: np.ndarray
    positions: np.ndarray
    iop: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_uids: list[str]
    frame_indices: list[int]


def ds_value(value: float) -> float:
    """``value`` as it reads back after being written as a DICOM decimal string (DS, 16 characters)."""
    return float(format_number_as_ds(float(value)))


def oblique_iop(rx_deg: float = 20.0, ry_deg: float = -15.0, rz_deg: float = 10.0) -> tuple[float, ...]:
    """ImageOrientationPatient of the axial plane rotated about x, then y, then z (degrees, LPS)."""
    ax, ay, az = (math.radians(a) for a in (rx_deg, ry_deg, rz_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rotation = rz @ ry @ rx
    return tuple(float(v) for v in np.concatenate([rotation @ [1.0, 0, 0], rotation @ [0, 1.0, 0]]))


def expected_affine(
    iop: Sequence[float], pixel_spacing: Sequence[float], positions: np.ndarray
) -> np.ndarray:
    """Voxel ``(column i, row j, slice k)`` -> RAS mm, written out from the DICOM definitions.

    Voxel ``(i, j)`` of slice ``k`` sits at
    ``IPP_k + i * column_spacing * row_dir + j * row_spacing * col_dir`` (LPS); the slice axis is the mean
    step between positions; RAS negates x and y.
    """
    iop = np.asarray(iop, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * pixel_spacing[1]
    lps[:3, 1] = iop[3:] * pixel_spacing[0]
    lps[:3, 2] = (positions[-1] - positions[0]) / max(len(positions) - 1, 1)
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _layout(
    shape: Sequence[int],
    spacing: Sequence[float],
    iop: Sequence[float],
    origin: Sequence[float],
    offsets: Sequence[float] | None,
    shift: Sequence[float],
) -> tuple[tuple[float, ...], tuple[float, float], np.ndarray]:
    """IOP, PixelSpacing and positions ``(slices, 3)`` as they will read back."""
    iop_written = tuple(ds_value(v) for v in iop)
    pixel_spacing = (ds_value(spacing[1]), ds_value(spacing[0]))
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    offsets = [k * spacing[2] for k in range(shape[2])] if offsets is None else list(offsets)
    positions = np.array(
        [np.asarray(origin, float) + d * normal + k * np.asarray(shift, float) for k, d in enumerate(offsets)]
    )
    return iop_written, pixel_spacing, np.vectorize(ds_value)(positions)


def _stored(shape: Sequence[int], modality: str, seed: int) -> np.ndarray:
    """Random stored values ``(slices, rows, columns)``: uint16 0..4095 (CT and MR alike)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=(shape[2], shape[1], shape[0]), dtype=np.uint16)


def _per_slice(value: float | Sequence[float] | None, count: int, default: float) -> list[float]:
    if value is None:
        return [default] * count
    if isinstance(value, (int, float)):
        return [float(value)] * count
    values = [float(v) for v in value]
    if len(values) != count:
        raise ValueError(f"need {count} per-slice values, got {len(values)}")
    return values


def _image_module(ds: Dataset, rows: int, columns: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0


def _common(ds: Dataset, sop_class: str, modality: str, uids: dict[str, str]) -> None:
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.Modality = modality
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYNTH0001"
    ds.SeriesNumber = 1


def save(ds: Dataset, path: Path, transfer_syntax: str, stored: np.ndarray) -> Path:
    """Write ``ds`` with ``stored`` ``(frames, rows, columns)`` as its pixels in ``transfer_syntax``.

    Native syntaxes store the bytes (byte-swapped for big endian), RLE Lossless is really encoded (pydicom's
    own encoder), and any other compressed syntax is *declared only*: one junk fragment per frame, so
    decoding must fail (to test codec errors).
    """
    ts = UID(transfer_syntax)
    ds.file_meta.TransferSyntaxUID = ts
    frames = np.ascontiguousarray(stored)
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<" if ts.is_little_endian else ">")).tobytes()
    ds["PixelData"].VR = "OW"
    if ts == RLELossless:
        ds.compress(RLELossless, frames if len(frames) > 1 else frames[0], generate_instance_uid=False)
    elif ts.is_encapsulated:
        ds.PixelData = encapsulate([b"\xff\xd8\x00junk-not-a-codestream\xff\xd9" for _ in range(len(frames))])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(
    folder: str | Path,
    *,
    shape: Sequence[int] = (8, 10, 5),
    spacing: Sequence[float] = (0.8, 0.9, 2.0),
    iop: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-20.0, -30.0, 10.0),
    offsets: Sequence[float] | None = None,
    shift: Sequence[float] = (0.0, 0.0, 0.0),
    modality: str = "MR",
    slopes: float | Sequence[float] | None = None,
    intercepts: float | Sequence[float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    shuffle_names: bool = False,
    instance_numbers: str = "ascending",
    echo_time: float | None = None,
    echo_number: int | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    prefix: str = "IM",
    seed: int = 0,
    stored: np.ndarray | None = None,
    edit: Edit | None = None,
) -> SynthSeries:
    """Write a classic single-frame MR or CT series (one file per slice).

    Args:
        shape: ``(columns, rows, slices)``.
        spacing: ``(column spacing, row spacing, slice spacing)`` mm.
        iop, origin, offsets, shift: the layout (see the module docstring); ``shift`` (LPS mm per slice)
            moves slices off the normal, like a gantry tilt.
        modality: "MR" (rescale tags only when given) or "CT" (slope 1, intercept -1024 by default).
        slopes, intercepts: RescaleSlope / RescaleIntercept, one value or one per slice (slice order).
        transfer_syntax: a native syntax, RLE Lossless (really encoded) or any other (declared, junk frames).
        shuffle_names: give files names in an order that differs from the slice order.
        instance_numbers: "ascending", "reversed" or "shuffled" InstanceNumber against slice order.
        echo_time, echo_number: EchoTime / EchoNumbers when given.
        image_type: ImageType values ("LOCALIZER" makes a scout).
        series_uid, study_uid, frame_of_reference_uid: share UIDs with another series (new ones by default).
        prefix: file name prefix, so several series can share a folder.
        seed: random stored values and name order.
        stored: explicit stored values ``(slices, rows, columns)`` uint16 instead of random ones.
        edit: ``edit(ds, k)`` changes slice ``k``'s dataset just before it is written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    count = shape[2]
    if instance_numbers not in ("ascending", "reversed", "shuffled"):
        raise ValueError(
            f"instance_numbers must be ascending, reversed or shuffled, got {instance_numbers!r}"
        )
    uids = {
        "series": series_uid or generate_uid(),
        "study": study_uid or generate_uid(),
        "frame_of_reference": frame_of_reference_uid or generate_uid(),
    }
    iop_w, pixel_spacing, positions = _layout(shape, spacing, iop, origin, offsets, shift)
    values = _stored(shape, modality, seed) if stored is None else np.asarray(stored, dtype=np.uint16)
    ct = modality == "CT"
    slope_list = _per_slice(slopes, count, 1.0)
    intercept_list = _per_slice(intercepts, count, -1024.0 if ct else 0.0)
    write_rescale = ct or slopes is not None or intercepts is not None
    slope_list = [ds_value(v) for v in slope_list]
    intercept_list = [ds_value(v) for v in intercept_list]
    name_order = list(range(count))
    if shuffle_names and count > 1:
        while name_order == sorted(name_order):
            name_order = rng.permutation(count).tolist()
    numbers = {
        "ascending": list(range(1, count + 1)),
        "reversed": list(range(count, 0, -1)),
        "shuffled": (rng.permutation(count) + 1).tolist(),
    }[instance_numbers]
    paths, sop_uids = [], []
    for k in range(count):
        ds = Dataset()
        _common(ds, CTImageStorage if ct else MRImageStorage, modality, uids)
        ds.ImageType = list(image_type)
        ds.InstanceNumber = numbers[k]
        ds.ImageOrientationPatient = [format_number_as_ds(v) for v in iop_w]
        ds.ImagePositionPatient = [format_number_as_ds(v) for v in positions[k]]
        ds.PixelSpacing = [format_number_as_ds(v) for v in pixel_spacing]
        ds.SliceThickness = format_number_as_ds(float(spacing[2]))
        if echo_time is not None:
            ds.EchoTime = format_number_as_ds(echo_time)
        if echo_number is not None:
            ds.EchoNumbers = echo_number
        if write_rescale:
            ds.RescaleSlope = format_number_as_ds(slope_list[k])
            ds.RescaleIntercept = format_number_as_ds(intercept_list[k])
        _image_module(ds, shape[1], shape[0])
        if edit is not None:
            edit(ds, k)
        path = folder / f"{prefix}{name_order[k]:04d}.dcm"
        save(ds, path, transfer_syntax, values[k][None])
        paths.append(path)
        sop_uids.append(str(ds.SOPInstanceUID))
    expected = np.stack(
        [(values[k].astype(np.float64) * slope_list[k] + intercept_list[k]).T for k in range(count)], axis=-1
    ).astype(np.float32)
    return SynthSeries(
        folder=folder,
        paths=paths,
        stored=values,
        expected=expected,
        affine=expected_affine(iop_w, pixel_spacing, positions),
        positions=positions,
        iop=iop_w,
        pixel_spacing=pixel_spacing,
        series_uid=uids["series"],
        study_uid=uids["study"],
        frame_of_reference_uid=uids["frame_of_reference"],
        sop_uids=sop_uids,
        frame_indices=[],
    )


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def write_enhanced(
    folder: str | Path,
    *,
    shape: Sequence[int] = (8, 10, 5),
    spacing: Sequence[float] = (0.8, 0.9, 2.0),
    iop: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-20.0, -30.0, 10.0),
    offsets: Sequence[float] | None = None,
    shift: Sequence[float] = (0.0, 0.0, 0.0),
    modality: str = "MR",
    slopes: float | Sequence[float] | None = None,
    intercepts: float | Sequence[float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    shuffle_frames: bool = True,
    per_frame_geometry: bool = False,
    echo_times: Sequence[float] | None = None,
    frame_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "NONE"),
    series_uid: str | None = None,
    name: str = "enhanced.dcm",
    seed: int = 0,
    edit: Callable[[Dataset], None] | None = None,
) -> SynthSeries:
    """Write one Enhanced MR (or CT) multi-frame image.

    Positions go in PerFrameFunctionalGroupsSequence / PlanePositionSequence; orientation and pixel spacing in
    SharedFunctionalGroupsSequence, or per frame with ``per_frame_geometry``. Rescale goes per frame
    (PixelValueTransformationSequence) when ``slopes``/``intercepts`` are given per slice, else shared.
    ``shuffle_frames`` stores frames in an order other than slice order. ``echo_times`` (one per frame, file
    order) writes a per-frame MREchoSequence; a multi-echo image repeats ``offsets``. Other arguments as in
    :func:`write_series`; ``edit(ds)`` changes the dataset before it is written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    count = shape[2] if offsets is None else len(offsets)
    shape = (shape[0], shape[1], count)
    uids = {
        "series": series_uid or generate_uid(),
        "study": generate_uid(),
        "frame_of_reference": generate_uid(),
    }
    iop_w, pixel_spacing, positions = _layout(shape, spacing, iop, origin, offsets, shift)
    values = _stored(shape, modality, seed)
    per_frame_rescale = not (slopes is None or isinstance(slopes, (int, float))) or not (
        intercepts is None or isinstance(intercepts, (int, float))
    )
    slope_list = [ds_value(v) for v in _per_slice(slopes, count, 1.0)]
    intercept_list = [
        ds_value(v) for v in _per_slice(intercepts, count, -1024.0 if modality == "CT" else 0.0)
    ]
    order = list(range(count))  # order[f] = slice k stored as frame f
    if shuffle_frames and count > 1:
        while order == sorted(order):
            order = rng.permutation(count).tolist()
    ds = Dataset()
    _common(ds, EnhancedCTImageStorage if modality == "CT" else EnhancedMRImageStorage, modality, uids)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = count
    _image_module(ds, shape[1], shape[0])
    orientation = _item(ImageOrientationPatient=[format_number_as_ds(v) for v in iop_w])
    measures = _item(
        PixelSpacing=[format_number_as_ds(v) for v in pixel_spacing],
        SliceThickness=format_number_as_ds(float(spacing[2])),
    )
    shared = Dataset()
    if not per_frame_geometry:
        shared.PlaneOrientationSequence = DicomSequence([orientation])
        shared.PixelMeasuresSequence = DicomSequence([measures])
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = DicomSequence(
            [_item(RescaleSlope=slope_list[0], RescaleIntercept=intercept_list[0], RescaleType="US")]
        )
    type_keyword = "CTImageFrameTypeSequence" if modality == "CT" else "MRImageFrameTypeSequence"
    per_frame = []
    for f, k in enumerate(order):
        item = Dataset()
        item.FrameContentSequence = DicomSequence([_item(InStackPositionNumber=k + 1, StackID="1")])
        item.PlanePositionSequence = DicomSequence(
            [_item(ImagePositionPatient=[format_number_as_ds(v) for v in positions[k]])]
        )
        setattr(item, type_keyword, DicomSequence([_item(FrameType=list(frame_type))]))
        if per_frame_geometry:
            item.PlaneOrientationSequence = DicomSequence([orientation])
            item.PixelMeasuresSequence = DicomSequence([measures])
        if per_frame_rescale:
            item.PixelValueTransformationSequence = DicomSequence(
                [_item(RescaleSlope=slope_list[k], RescaleIntercept=intercept_list[k], RescaleType="US")]
            )
        if echo_times is not None:
            item.MREchoSequence = DicomSequence([_item(EffectiveEchoTime=float(echo_times[f]))])
        per_frame.append(item)
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    if edit is not None:
        edit(ds)
    path = save(ds, folder / name, transfer_syntax, values[order])
    expected = np.stack(
        [(values[k].astype(np.float64) * slope_list[k] + intercept_list[k]).T for k in range(count)], axis=-1
    ).astype(np.float32)
    frame_of_slice = [order.index(k) for k in range(count)]
    return SynthSeries(
        folder=folder,
        paths=[path],
        stored=values,
        expected=expected,
        affine=expected_affine(iop_w, pixel_spacing, positions),
        positions=positions,
        iop=iop_w,
        pixel_spacing=pixel_spacing,
        series_uid=uids["series"],
        study_uid=uids["study"],
        frame_of_reference_uid=uids["frame_of_reference"],
        sop_uids=[str(ds.SOPInstanceUID)],
        frame_indices=frame_of_slice,
    )


def write_non_image(path: str | Path, kind: str) -> Path:
    """Write a DICOM object that is not an image: one of ``NON_IMAGE_KINDS``.

    ``sr`` Basic Text SR, ``rtstruct``, ``presentation_state`` (GSPS), ``kos`` key object selection, ``pdf``
    encapsulated PDF, ``seg`` a segmentation (has pixel data but is no scan), ``dicomdir`` a media storage
    directory, ``no_pixels`` a private SOP class without pixel data.
    """
    classes = {
        "sr": (BasicTextSRStorage, "SR"),
        "rtstruct": (RTStructureSetStorage, "RTSTRUCT"),
        "presentation_state": (GrayscaleSoftcopyPresentationStateStorage, "PR"),
        "kos": (KeyObjectSelectionDocumentStorage, "KO"),
        "pdf": (EncapsulatedPDFStorage, "DOC"),
        "seg": (SegmentationStorage, "SEG"),
        "no_pixels": ("1.2.826.0.1.3680043.9.9999.1", "OT"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dicomdir":
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.FileSetID = "SYNTH"
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
        ds.FileSetConsistencyFlag = 0
        ds.DirectoryRecordSequence = DicomSequence([])
        ds.save_as(path, enforce_file_format=True)
        return path
    if kind not in classes:
        raise ValueError(f"kind must be one of {NON_IMAGE_KINDS}, got {kind!r}")
    sop_class, modality = classes[kind]
    ds = Dataset()
    uids = {"series": generate_uid(), "study": generate_uid(), "frame_of_reference": generate_uid()}
    _common(ds, sop_class, modality, uids)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if kind == "pdf":
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%synthetic\n"
    if kind == "sr":
        ds.ValueType = "CONTAINER"
    if kind == "seg":
        ds.NumberOfFrames = 1
        _image_module(ds, 10, 8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.zeros((10, 8), np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_not_dicom(path: str | Path, kind: str = "random", seed: int = 0) -> Path:
    """Write a file named like DICOM that is not: ``random`` bytes, ``text`` or ``empty``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "random":
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 600, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("not a DICOM file\n" * 20)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(f"kind must be one of {NOT_DICOM_KINDS}, got {kind!r}")
    return path


def cut_preamble(source: str | Path, dest: str | Path, keep_from: int = 64) -> Path:
    """Copy ``source`` without its first ``keep_from`` bytes (a preamble cut short, so no 'DICM' at 128)."""
    dest = Path(dest)
    dest.write_bytes(Path(source).read_bytes()[keep_from:])
    return dest


def junk_frames(path: str | Path, transfer_syntax: str = RLELossless) -> Path:
    """Re-declare ``path`` as compressed in ``transfer_syntax`` with undecodable frames (in place)."""
    path = Path(path)
    ds = dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.PixelData = encapsulate([b"\x00\x01junk-not-a-codestream" for _ in range(frames)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def truncate(path: str | Path, drop: int) -> Path:
    """Remove the last ``drop`` bytes of ``path`` in place (a file cut short in transfer)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - drop])
    return path


def copy_as(path: str | Path, dest: str | Path) -> Path:
    """Copy a file under another name (an identical duplicate)."""
    return Path(shutil.copyfile(path, dest))
