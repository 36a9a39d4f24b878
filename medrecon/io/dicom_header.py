"""What one DICOM file says: its header facts, per-frame geometry and rescale, and its decoded pixels.

:func:`read_header` opens a file once with ``stop_before_pixels=True`` (for scanning) and :func:`read_file`
reads it whole (for pixels); both classify it the same way. A file that belongs to no series raises
``RejectedInput``:

- ``not_dicom``: no DICOM Part 10 header (no ``DICM`` prefix: random bytes, a cut preamble; raw datasets
  without file meta are not read);
- ``non_image``: a DICOMDIR, a SOP class pydicom knows that is not an "Image Storage" class (SR, RTSTRUCT,
  presentation states, KOS, encapsulated documents, segmentations, RT dose, ...), or no pixel data and no
  image attributes;
- ``truncated_file``: an image that stops before its image attributes;
- ``unreadable``: the file cannot be opened or pydicom cannot parse it;
- ``unsupported``: no SeriesInstanceUID.

Defects that reject the file's whole series are recorded as ``FileHeader.problem``: a pixel description
pydicom's decoders cannot use (SamplesPerPixel, PhotometricInterpretation, BitsAllocated, BitsStored or
PixelRepresentation missing, or an integer attribute that is not one integer) or a RescaleSlope/Intercept
that is present but not one finite number (``unreadable``); colour, palette or float pixel data, bit depths
or a sign the decoders do not define, or a Modality LUT (``unsupported``); Rows/Columns over ``MAX_MATRIX``,
more than ``MAX_FRAMES`` frames or more than ``MAX_VOXELS`` voxels (``implausible_size``); uncompressed pixel
data shorter than Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8, or none at all
(``truncated_pixels``, from the bytes left in the file after the header at scan time), or longer by a whole
frame or more (``decode_error``: pydicom would return extra frames); a compressed transfer syntax without an
installed decoder (``missing_codec``; ``unsupported`` when pydicom has no decoder for it); an enhanced image
without one functional group per frame (``missing_geometry``).

Enhanced multi-frame images give one ``FrameHeader`` per frame, read from PerFrameFunctionalGroupsSequence,
else SharedFunctionalGroupsSequence, else the top level (PlanePosition, PlaneOrientation, PixelMeasures,
PixelValueTransformation, MREcho, frame type and CT acquisition details).

Detail messages carry counts, sizes and SOP class or transfer syntax names only, never tag text or file
names; :func:`quiet_pydicom` switches off pydicom's value validation and logging, whose warnings quote tag
text.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage

from medrecon.io.errors import Reason, RejectedInput

MAX_MATRIX = 4096
MAX_FRAMES = 5000
MAX_VOXELS = 1_000_000_000
CODECS_HINT = "pip install medrecon[codecs]"

_PIXEL_TAG = 0x7FE00010
# the pixel description pydicom's decoders read (PS3.3 C.7.6.3): required, and the integer ones single integers
_PIXEL_DESCRIPTION = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)
_PIXEL_INTEGERS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)
_FLOAT_PIXEL_TAGS = (0x7FE00008, 0x7FE00009)
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass
class PixelInfo:
    """What is known about a file's pixel data element without decoding it (byte counts; None = unknown)."""

    present: bool
    float_pixels: bool = False
    declared: int | None = None
    available: int | None = None


@dataclass(eq=False)
class FrameHeader:
    """One 2D image: a single-frame file (``index`` None) or one frame of a multi-frame file."""

    file: FileHeader
    index: int | None
    iop: tuple[float, ...] | None
    ipp: np.ndarray | None
    pixel_spacing: tuple[float, ...] | None
    echo: str
    localizer: bool
    slope: float
    intercept: float
    gantry_tilt: float
    acquisition: tuple[str, ...]
    thickness: float | None = None  # SliceThickness, mm (the depth of a lone slice)

    @property
    def path(self) -> Path:
        return self.file.path

    @property
    def sort_key(self) -> tuple[str, int]:
        return str(self.file.path), -1 if self.index is None else self.index


@dataclass(eq=False)
class FileHeader:
    """Header facts of one image file; ``problem`` is a per-file defect that rejects the whole series."""

    path: Path
    size: int
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_uid: str
    modality: str
    rows: int
    columns: int
    number_of_frames: int
    multiframe: bool
    problem: RejectedInput | None
    frames: list[FrameHeader] = field(default_factory=list)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Stop pydicom from validating values and from logging: its warnings and log lines quote tag text
    (patient data), and its pixel decoders log a traceback for every plugin that fails before raising."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    logger = logging.getLogger("pydicom")  # its modules log through children that inherit this level
    saved_level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = saved
        logger.setLevel(saved_level)


def _get(item: Dataset | None, keyword: str) -> Any:
    """A tag value, or None when absent or when pydicom cannot convert it."""
    if item is None:
        return None
    try:
        return item.get(keyword)
    except Exception:  # noqa: BLE001 - malformed values are treated as missing
        return None


def _text(item: Dataset | None, keyword: str) -> str:
    value = _get(item, keyword)
    return "" if value is None else str(value).strip()


def _values(item: Dataset | None, keyword: str) -> list[Any]:
    value = _get(item, keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _floats(
    item: Dataset | None, keyword: str, count: int, *, finite: bool = True
) -> tuple[float, ...] | None:
    """``count`` numbers, else None; NaN/inf count as missing unless ``finite=False`` (geometry tags keep
    them, so the stack validation refuses them as ``degenerate_geometry`` instead of ``missing_geometry``)."""
    values = _values(item, keyword)
    if len(values) != count:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return numbers if not finite or all(math.isfinite(v) for v in numbers) else None


def _float(item: Dataset | None, keyword: str) -> float | None:
    number = _floats(item, keyword, 1)
    return None if number is None else number[0]


def _int(item: Dataset | None, keyword: str) -> int | None:
    values = _values(item, keyword)
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def _first_item(item: Dataset | None, keyword: str) -> Dataset | None:
    sequence = _get(item, keyword)
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _macro(per_frame: Dataset | None, shared: Dataset | None, keyword: str) -> Dataset | None:
    """A functional-group macro item: the per-frame one, else the shared one."""
    return _first_item(per_frame, keyword) or _first_item(shared, keyword)


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; guessed from how pydicom read the dataset when the file meta lacks it."""
    uid = _text(getattr(ds, "file_meta", None), "TransferSyntaxUID")
    if uid:
        return UID(uid)
    implicit, _little = getattr(ds, "original_encoding", (False, True))
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _codec_problem(ts: UID) -> RejectedInput | None:
    """``missing_codec`` / ``unsupported`` when this machine cannot decode pixel data in ``ts``."""
    if not ts.is_transfer_syntax:
        return RejectedInput(Reason.UNSUPPORTED, f"unknown transfer syntax {ts}")
    if not ts.is_encapsulated:
        return None
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return RejectedInput(Reason.UNSUPPORTED, f"pydicom cannot decode pixel data in {ts.name}")
    if not decoder.is_available:
        return RejectedInput(
            Reason.MISSING_CODEC,
            f"no decoder installed for {ts.name}; install the optional codecs with `{CODECS_HINT}`",
        )
    return None


def _expected_bytes(rows: int, columns: int, samples: int, frames: int, bits: int) -> int:
    return (rows * columns * samples * frames * bits + 7) // 8


def _size_problem(rows: int, columns: int, frames: int) -> RejectedInput | None:
    if rows <= 0 or columns <= 0 or frames <= 0:
        return RejectedInput(
            Reason.IMPLAUSIBLE_SIZE, f"Rows x Columns x frames is {rows} x {columns} x {frames}"
        )
    if rows > MAX_MATRIX or columns > MAX_MATRIX:
        return RejectedInput(
            Reason.IMPLAUSIBLE_SIZE, f"a {rows} x {columns} matrix is larger than {MAX_MATRIX} x {MAX_MATRIX}"
        )
    if frames > MAX_FRAMES:
        return RejectedInput(Reason.IMPLAUSIBLE_SIZE, f"{frames} frames is more than {MAX_FRAMES}")
    return voxels_problem((rows, columns, frames))


def voxels_problem(shape: Sequence[int]) -> RejectedInput | None:
    voxels = math.prod(int(s) for s in shape)
    if voxels > MAX_VOXELS:
        return RejectedInput(Reason.IMPLAUSIBLE_SIZE, f"{voxels} voxels is more than {MAX_VOXELS:.0e}")
    return None


def _unparsable(item: Dataset | None, keyword: str) -> bool:
    """Whether ``keyword`` holds a value that is not one finite number (an empty value counts as absent)."""
    if item is None or keyword not in item:
        return False
    try:
        value = item[keyword].value
    except Exception:  # noqa: BLE001 - pydicom cannot convert it
        return True
    return value is not None and value != "" and _float(item, keyword) is None


def _rescale_problem(ds: Dataset) -> RejectedInput | None:
    """``unreadable`` when a RescaleSlope/RescaleIntercept is present but not one finite number (top level or
    in a functional group): using the default instead would silently change every value (CT's -1024)."""
    groups = [
        _first_item(ds, "SharedFunctionalGroupsSequence"),
        *(_get(ds, "PerFrameFunctionalGroupsSequence") or []),
    ]
    for item in [ds, *(_first_item(g, "PixelValueTransformationSequence") for g in groups)]:
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if _unparsable(item, keyword):
                return RejectedInput(Reason.UNREADABLE, f"{keyword} is not a finite number")
    return None


def _pixel_description_problem(ds: Dataset) -> RejectedInput | None:
    """``unreadable`` when an attribute pydicom's decoders need is missing, or an integer one is not a single
    integer (text, several values, a wrong VR): the decoder would fail later with a less useful error."""
    missing = [k for k in _PIXEL_DESCRIPTION if _get(ds, k) in (None, "")]
    if missing:
        return RejectedInput(Reason.UNREADABLE, f"the pixel description lacks {', '.join(missing)}")
    for keyword in _PIXEL_INTEGERS:
        value = _get(ds, keyword)
        if keyword in ds and (isinstance(value, bool) or not isinstance(value, int)):
            return RejectedInput(Reason.UNREADABLE, f"{keyword} is not a single integer")
    return None


def _image_problem(
    ds: Dataset, pixels: PixelInfo, rows: int, columns: int, frames: int
) -> RejectedInput | None:
    """The first per-file defect that makes the series unreadable, or None."""
    problem = _pixel_description_problem(ds)
    if problem is not None:
        return problem
    samples = _int(ds, "SamplesPerPixel") or 0
    bits = _int(ds, "BitsAllocated") or 0
    if samples < 1:
        return RejectedInput(Reason.UNREADABLE, f"SamplesPerPixel {samples} is not a number of samples")
    if samples != 1:
        return RejectedInput(
            Reason.UNSUPPORTED, f"colour images (SamplesPerPixel {samples}) are not supported"
        )
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        shown = photometric if photometric.replace("_", "").replace(" ", "").isalnum() else "an unknown"
        return RejectedInput(
            Reason.UNSUPPORTED, f"{shown[:16]} PhotometricInterpretation is not supported (greyscale only)"
        )
    problem = _size_problem(rows, columns, frames)
    if problem is not None:
        return problem
    if pixels.float_pixels:
        return RejectedInput(Reason.UNSUPPORTED, "floating-point pixel data is not supported")
    if bits not in (1, 8, 16, 32):
        return RejectedInput(Reason.UNSUPPORTED, f"BitsAllocated {bits} is not supported")
    stored_bits, representation = _int(ds, "BitsStored") or 0, _int(ds, "PixelRepresentation")
    if not 1 <= stored_bits <= bits:
        return RejectedInput(
            Reason.UNSUPPORTED, f"BitsStored {stored_bits} does not fit BitsAllocated {bits}"
        )
    if representation not in (0, 1):
        return RejectedInput(
            Reason.UNSUPPORTED, f"PixelRepresentation {representation} is neither 0 (unsigned) nor 1 (signed)"
        )
    if _get(ds, "ModalityLUTSequence"):
        return RejectedInput(Reason.UNSUPPORTED, "a Modality LUT Sequence is not supported (only rescale)")
    problem = _rescale_problem(ds)
    if problem is not None:
        return problem
    ts = _transfer_syntax(ds)
    if not pixels.present:
        return RejectedInput(Reason.TRUNCATED_PIXELS, "the image has no pixel data (file cut short?)")
    if ts.is_transfer_syntax and not ts.is_encapsulated and pixels.available is not None:
        expected = _expected_bytes(rows, columns, samples, frames, bits)
        held = pixels.available if pixels.declared is None else min(pixels.available, pixels.declared)
        if held < expected:
            return RejectedInput(
                Reason.TRUNCATED_PIXELS,
                f"pixel data holds {held} of the {expected} bytes the header declares",
            )
        frame_bytes = _expected_bytes(rows, columns, samples, 1, bits)
        if bits > 1 and held - expected >= frame_bytes:  # pydicom would return the excess as extra frames
            return RejectedInput(
                Reason.DECODE_ERROR,
                f"pixel data holds {held} bytes, {held // frame_bytes} frames' worth; the header declares "
                f"{frames} frame(s) of {frame_bytes} bytes",
            )
    return _codec_problem(ts)


def _is_localizer(values: Iterable[Any]) -> bool:
    return any(str(v).strip().upper() == "LOCALIZER" for v in values)


def _echo_key(echo_numbers: Sequence[Any], echo_time: float | None) -> str:
    numbers = ",".join(str(v).strip() for v in echo_numbers)
    return f"{numbers}/{'' if echo_time is None else f'{echo_time:.4f}'}"


def _acquisition(ds: Dataset, slope: float, intercept: float) -> tuple[str, ...]:
    """Values that tell two acquisitions at one position apart (used to judge duplicates)."""
    keywords = ("AcquisitionNumber", "TemporalPositionIdentifier", "TriggerTime", "DiffusionBValue")
    return (*(_text(ds, k) for k in keywords), repr(slope), repr(intercept))


def _rescale(item: Dataset | None) -> tuple[float | None, float | None]:
    return _float(item, "RescaleSlope"), _float(item, "RescaleIntercept")


def _real_world_map(item: Dataset | None) -> tuple[float | None, float | None]:
    """``(slope, intercept)`` of the only linear item of ``item``'s RealWorldValueMappingSequence, else Nones.

    Used for an image without a Modality LUT (an MR image, whose IOD has none, written by medrecon or by a
    scanner that records real-world values): several mappings (other units) or a LUT leave stored values.
    """
    linear = [
        m for m in _get(item, "RealWorldValueMappingSequence") or [] if _float(m, "RealWorldValueSlope")
    ]
    if len(linear) != 1:
        return None, None
    return _float(linear[0], "RealWorldValueSlope"), _float(linear[0], "RealWorldValueIntercept") or 0.0


def _single_frame(file: FileHeader, ds: Dataset) -> FrameHeader:
    slope, intercept = _rescale(ds)
    if slope is None and intercept is None:
        slope, intercept = _real_world_map(ds)
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    ipp = _floats(ds, "ImagePositionPatient", 3, finite=False)
    return FrameHeader(
        file=file,
        index=None,
        iop=_floats(ds, "ImageOrientationPatient", 6, finite=False),
        ipp=None if ipp is None else np.array(ipp),
        pixel_spacing=_floats(ds, "PixelSpacing", 2, finite=False),
        echo=_echo_key(_values(ds, "EchoNumbers"), _float(ds, "EchoTime")),
        localizer=_is_localizer(_values(ds, "ImageType")),
        slope=slope,
        intercept=intercept,
        gantry_tilt=_float(ds, "GantryDetectorTilt") or 0.0,
        acquisition=_acquisition(ds, slope, intercept),
        thickness=_float(ds, "SliceThickness"),
    )


def _multi_frames(file: FileHeader, ds: Dataset) -> list[FrameHeader]:
    """One record per frame of an enhanced image (per-frame macros first, then shared, then top level)."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence") or []
    top_slope, top_intercept = _rescale(ds)
    image_localizer = _is_localizer(_values(ds, "ImageType"))
    frames = []
    for index, item in enumerate(per_frame):
        position = _floats(
            _macro(item, shared, "PlanePositionSequence"), "ImagePositionPatient", 3, finite=False
        )
        orientation = _macro(item, shared, "PlaneOrientationSequence")
        measures = _macro(item, shared, "PixelMeasuresSequence")
        slope, intercept = _rescale(_macro(item, shared, "PixelValueTransformationSequence"))
        slope = top_slope if slope is None else slope
        intercept = top_intercept if intercept is None else intercept
        if slope is None and intercept is None:
            slope, intercept = _real_world_map(item if "RealWorldValueMappingSequence" in item else shared)
        frame_type = _macro(item, shared, "MRImageFrameTypeSequence") or _macro(
            item, shared, "CTImageFrameTypeSequence"
        )
        echo_time = _float(_macro(item, shared, "MREchoSequence"), "EffectiveEchoTime")
        tilt = _float(_macro(item, shared, "CTAcquisitionDetailsSequence"), "GantryDetectorTilt")
        frames.append(
            FrameHeader(
                file=file,
                index=index,
                iop=_floats(orientation, "ImageOrientationPatient", 6, finite=False)
                or _floats(ds, "ImageOrientationPatient", 6, finite=False),
                ipp=None if position is None else np.array(position),
                pixel_spacing=_floats(measures, "PixelSpacing", 2, finite=False)
                or _floats(ds, "PixelSpacing", 2, finite=False),
                thickness=_float(measures, "SliceThickness") or _float(ds, "SliceThickness"),
                echo=_echo_key([], echo_time),
                localizer=image_localizer or _is_localizer(_values(frame_type, "FrameType")),
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
                gantry_tilt=tilt if tilt is not None else (_float(ds, "GantryDetectorTilt") or 0.0),
                acquisition=(),
            )
        )
    return frames


def _parse(path: Path, ds: Dataset, pixels: PixelInfo, size: int) -> FileHeader:
    """Classify one dataset: raise ``RejectedInput`` for a file in no series, else describe the file."""
    file_meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds, "SOPClassUID") or _text(file_meta, "MediaStorageSOPClassUID")
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise RejectedInput(Reason.NON_IMAGE, "a DICOMDIR (media storage directory), not an image")
    class_name = UID(sop_class).name if sop_class else ""
    known_class = bool(sop_class) and class_name != sop_class
    image_class = "Image Storage" in class_name
    if known_class and not image_class:
        raise RejectedInput(Reason.NON_IMAGE, f"{class_name} is not an image")
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    series_uid = _text(ds, "SeriesInstanceUID")
    if not pixels.present:
        if not (image_class or "Rows" in ds):
            raise RejectedInput(Reason.NON_IMAGE, "no pixel data")
        if not (rows and columns and series_uid):
            raise RejectedInput(Reason.TRUNCATED_FILE, "the image ends before its image attributes")
    if not series_uid:
        raise RejectedInput(Reason.UNSUPPORTED, "no SeriesInstanceUID: the image belongs to no series")
    number_of_frames = _int(ds, "NumberOfFrames")
    frames_count = 1 if number_of_frames is None else number_of_frames
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    multiframe = frames_count > 1 or per_frame is not None
    file = FileHeader(
        path=path,
        size=size,
        series_uid=series_uid,
        study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        sop_class_uid=sop_class,
        sop_uid=_text(ds, "SOPInstanceUID"),
        modality=_text(ds, "Modality") or "OT",
        rows=rows,
        columns=columns,
        number_of_frames=frames_count,
        multiframe=multiframe,
        problem=_image_problem(ds, pixels, rows, columns, frames_count),
    )
    if not multiframe:
        file.frames = [_single_frame(file, ds)]
    elif per_frame is None or len(per_frame) != frames_count:
        file.frames = [_single_frame(file, ds)]
        file.problem = file.problem or RejectedInput(
            Reason.MISSING_GEOMETRY, "a multi-frame image without one functional group per frame"
        )
    else:
        file.frames = _multi_frames(file, ds)
    return file


def _pixel_info_at(fp: Any, size: int, ds: Dataset) -> PixelInfo:
    """Inspect the element where ``stop_before_pixels`` stopped: pixel tag, declared and available bytes."""
    if _transfer_syntax(ds) == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return PixelInfo(present=True)  # the dataset was inflated in memory: no byte accounting here
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return PixelInfo(present=False)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    endian = "<" if little is not False else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag != _PIXEL_TAG and tag not in _FLOAT_PIXEL_TAGS:
        return PixelInfo(present=False)
    if implicit:
        (length,), header = struct.unpack(f"{endian}I", head[4:8]), 8
    elif head[4:6] in _LONG_LENGTH_VRS and len(head) == 12:
        (length,), header = struct.unpack(f"{endian}I", head[8:12]), 12
    else:
        (length,), header = struct.unpack(f"{endian}H", head[6:8]), 8
    return PixelInfo(
        present=True,
        float_pixels=tag in _FLOAT_PIXEL_TAGS,
        declared=None if length == 0xFFFFFFFF else length,
        available=max(size - start - header, 0),
    )


def read_header(path: Path) -> FileHeader:
    """Open ``path`` once, read its header with ``stop_before_pixels=True`` and classify it.

    Raises:
        RejectedInput: the file belongs to no series (see the module docstring).
    """
    with _refusing_unreadable("header"):
        with path.open("rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            pixels = _pixel_info_at(fp, size, ds)
        return _parse(path, ds, pixels, size)


def read_file(path: Path) -> tuple[Dataset, FileHeader]:
    """Read ``path`` whole (pixels included) and classify it as :func:`read_header` does.

    Raises:
        RejectedInput: the file belongs to no series (see the module docstring).
    """
    with _refusing_unreadable("file"):
        with path.open("rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            ds = pydicom.dcmread(fp)
        return ds, _parse(path, ds, _pixel_info_of(ds), size)


def _error_name(err: BaseException) -> str:
    """The exception's class name for a detail message, with its module when the name alone says nothing
    (``struct.error``, ``zlib.error``)."""
    kind = type(err)
    return kind.__name__ if kind.__name__[:1].isupper() else f"{kind.__module__}.{kind.__name__}"


@contextlib.contextmanager
def _refusing_unreadable(what: str) -> Iterator[None]:
    """Turn any failure to read or parse one file into that file's ``RejectedInput`` (never a crash)."""
    try:
        yield
    except RejectedInput:
        raise
    except InvalidDicomError as err:
        raise RejectedInput(Reason.NOT_DICOM, "no DICOM Part 10 header ('DICM' prefix)") from err
    except zlib.error as err:
        raise RejectedInput(
            Reason.UNREADABLE, "the deflated data set cannot be inflated (cut short or damaged)"
        ) from err
    except OSError as err:
        raise RejectedInput(Reason.UNREADABLE, f"cannot read the file ({type(err).__name__})") from err
    except Exception as err:  # noqa: BLE001 - a file pydicom cannot parse is this file's failure, not the scan's
        raise RejectedInput(
            Reason.UNREADABLE, f"pydicom cannot parse the {what} ({_error_name(err)})"
        ) from err


def _pixel_info_of(ds: Dataset) -> PixelInfo:
    if "PixelData" in ds:
        raw = ds.PixelData
        encapsulated = _transfer_syntax(ds).is_transfer_syntax and _transfer_syntax(ds).is_encapsulated
        length = None if raw is None or encapsulated else len(raw)
        return PixelInfo(present=raw is not None, declared=length, available=length)
    return PixelInfo(present=False, float_pixels=any(tag in ds for tag in _FLOAT_PIXEL_TAGS))


def decode_frames(ds: Dataset, file: FileHeader) -> np.ndarray:
    """Decoded stored values of a dataset read by :func:`read_file`, shape ``(frames, rows, columns)``.

    Raises:
        RejectedInput: ``decode_error`` when pydicom's decoder fails.
    """
    ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    try:
        array = np.asarray(ds.pixel_array)
        return array.reshape(file.number_of_frames, file.rows, file.columns)
    except Exception as err:  # noqa: BLE001 - every decoder failure is this series' failure
        raise RejectedInput(
            Reason.DECODE_ERROR,
            f"cannot decode {_transfer_syntax(ds).name} pixel data ({_error_name(err)})",
        ) from err


def physical_values(stored: np.ndarray, frame: FrameHeader) -> np.ndarray:
    """Stored values -> physical units (HU for CT): ``stored * slope + intercept`` for one slice, float32."""
    return (stored.astype(np.float64) * frame.slope + frame.intercept).astype(np.float32)


def pixel_hash(ds: Dataset) -> str:
    """SHA-256 hex of the raw PixelData bytes as stored (compressed bytes for compressed syntaxes)."""
    return hashlib.sha256(bytes(ds.PixelData)).hexdigest()
