"""Fuzzed DICOM archives for tests: valid synthetic series (``synth_dicom``) with deterministic damage.

:func:`write_archive` writes ``count`` cases under a root folder, one folder per case (each case is its own
series with its own UIDs, so cases never merge), and returns what it wrote. Case ``n`` of seed ``s`` is always
the same bytes: the damage is drawn from ``numpy.random.default_rng([s, n])`` and every UID is derived from
``(s, n)``.

A case starts as a valid 16x16x4 classic series (or an enhanced multi-frame image) and gets one mutation from
:data:`MUTATIONS`:

- header: drop a required tag; unparsable values (text in DS, values of the wrong length, binary values
  under a wrong VR); NaN/Inf in positions, orientation, spacing and rescale; zero or negative spacing and
  degenerate orientations; huge or zero Rows/Columns/NumberOfFrames; unsupported bits, sign, samples,
  photometric interpretation; foreign SOP classes; broken UIDs; a declared transfer syntax that does not
  match the bytes;
- pixels: cut short (declared or by truncating the file), too long, empty, junk compressed frames;
- whole files: random byte flips anywhere, files cut at a random offset;
- valid variations (``FuzzCase.valid``): the untouched series in every native syntax and RLE, and series
  whose files mix explicit/implicit little endian, big endian, deflated and RLE.

Values are written with pydicom where it lets us and as raw bytes under the ``UN`` VR where it refuses (it
will not encode text in a DS), which real archives also contain. No patient data: names are dummies.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import synth_dicom as sd
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

SHAPE = (16, 16, 4)  # (columns, rows, slices)
NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
SYNTAXES = (*NATIVE, RLELossless)

REQUIRED_TAGS = (
    "Rows",
    "Columns",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "PixelData",
)
DS_TAGS = (
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "SliceThickness",
)
GEOMETRY_TAGS = ("PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient")


@dataclass(frozen=True)
class FuzzCase:
    """One case folder.

    Attributes:
        folder: the case's folder (its files and nothing else).
        mutation: the name of the mutation (a key of :data:`MUTATIONS`).
        detail: what exactly was done (tags, values, files, offsets).
        valid: True when the case must reconstruct (no damage, or only legal variation).
    """

    folder: Path
    mutation: str
    detail: str
    valid: bool


Mutation = Callable[[list[Path], np.random.Generator], str]


# ------------------------------------------------------------------------------------------------- helpers
def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _pick(files: list[Path], rng: np.random.Generator) -> list[Path]:
    """One file or all of them (half the time each)."""
    if rng.random() < 0.5:
        return [files[int(rng.integers(len(files)))]]
    return list(files)


def edit_file(path: Path, change: Callable[[Dataset], None]) -> None:
    """Read ``path``, apply ``change`` to its dataset and write it back in its own transfer syntax."""
    settings = pydicom_config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    saved_un = pydicom_config.replace_un_with_known_vr
    settings.reading_validation_mode = settings.writing_validation_mode = (
        pydicom_config.IGNORE
    )  # bad on purpose
    pydicom_config.replace_un_with_known_vr = False  # keep UN elements as the bytes we give them
    try:
        ds = pydicom.dcmread(path, force=True)
        change(ds)
        ds.save_as(path, enforce_file_format=False)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved
        pydicom_config.replace_un_with_known_vr = saved_un


def set_raw(ds: Dataset, keyword: str, value: bytes) -> None:
    """Store ``value`` as the raw bytes of ``keyword`` (VR UN: pydicom writes it as it is)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if keyword in ds:
        del ds[keyword]
    ds.add_new(tag, "UN", value + (b" " if len(value) % 2 else b""))


def _delete(ds: Dataset, keyword: str) -> None:
    if keyword in ds:
        del ds[keyword]


def _each(files: list[Path], rng: np.random.Generator, change: Callable[[Dataset], None]) -> int:
    chosen = _pick(files, rng)
    for path in chosen:
        edit_file(path, change)
    return len(chosen)


# ----------------------------------------------------------------------------------------------- mutations
def drop_tag(files: list[Path], rng: np.random.Generator) -> str:
    keyword = str(rng.choice(REQUIRED_TAGS))
    file_meta_too = keyword == "SOPClassUID" and rng.random() < 0.5

    def change(ds: Dataset) -> None:
        _delete(ds, keyword)
        if file_meta_too:
            _delete(ds.file_meta, "MediaStorageSOPClassUID")

    n = _each(files, rng, change)
    return f"drop {keyword}{' (and the file meta SOP class)' if file_meta_too else ''} in {n} file(s)"


def text_in_ds(files: list[Path], rng: np.random.Generator) -> str:
    keyword = str(rng.choice(DS_TAGS))
    value = bytes(rng.choice([b"abc\\def", b"1.0\\x", b"--5", b"1,5\\2,5", b"\\\\\\", b"1e\\2e3e"]))
    n = _each(files, rng, lambda ds: set_raw(ds, keyword, value))
    return f"{keyword} = {value!r} (UN) in {n} file(s)"


def wrong_count(files: list[Path], rng: np.random.Generator) -> str:
    keyword = str(rng.choice(GEOMETRY_TAGS))
    wanted = {"PixelSpacing": 2, "ImagePositionPatient": 3, "ImageOrientationPatient": 6}[keyword]
    count = int(rng.choice([1, wanted - 1, wanted + 1, wanted * 2]))
    values = [str(round(float(v), 3)) for v in rng.uniform(0.5, 2.0, count)]
    n = _each(files, rng, lambda ds: setattr(ds, keyword, values))
    return f"{keyword} with {count} values in {n} file(s)"


def non_finite(files: list[Path], rng: np.random.Generator) -> str:
    keyword = str(rng.choice(DS_TAGS))
    token = bytes(rng.choice([b"nan", b"inf", b"-inf", b"NaN", b"1e999"]))

    def change(ds: Dataset) -> None:
        count = len(ds[keyword].value) if keyword in ds and ds[keyword].VM > 1 else 1
        values = [b"1"] * count
        values[int(rng.integers(count))] = token
        set_raw(ds, keyword, b"\\".join(values))

    n = _each(files, rng, change)
    return f"{keyword} holds {token!r} in {n} file(s)"


def bad_geometry(files: list[Path], rng: np.random.Generator) -> str:
    choice = int(rng.integers(5))
    if choice == 0:
        value, keyword = ["0", "0.9"], "PixelSpacing"
    elif choice == 1:
        value, keyword = ["-0.9", "-0.8"], "PixelSpacing"
    elif choice == 2:
        value, keyword = ["0", "0", "0", "0", "0", "0"], "ImageOrientationPatient"
    elif choice == 3:
        value, keyword = ["1", "0", "0", "1", "0", "0"], "ImageOrientationPatient"  # parallel
    else:
        value, keyword = ["1", "0", "0", "0.5", "0.5", "0"], "ImageOrientationPatient"  # not orthogonal
    n = _each(files, rng, lambda ds: setattr(ds, keyword, value))
    return f"{keyword} = {value} in {n} file(s)"


def same_position(files: list[Path], rng: np.random.Generator) -> str:
    """Every slice at one position, the last slice at its neighbour's position (a copy with other pixels),
    or one slice moved off its line (tilt) or far away (gap)."""
    choice = int(rng.integers(4))
    if choice < 2:
        value = pydicom.dcmread(
            files[choice * (len(files) - 2)], stop_before_pixels=True
        ).ImagePositionPatient
        for path in files[1:] if choice == 0 else files[-1:]:
            edit_file(path, lambda ds: setattr(ds, "ImagePositionPatient", value))
        return "every slice at the first slice's position" if choice == 0 else "last slice on its neighbour"
    path = files[int(rng.integers(1, len(files)))]
    shift = [7.0, 0.0, 0.0] if choice == 2 else [0.0, 0.0, 37.0]

    def change(ds: Dataset) -> None:
        ds.ImagePositionPatient = [f"{float(v) + d:.4f}" for v, d in zip(ds.ImagePositionPatient, shift)]

    edit_file(path, change)
    return f"one slice shifted by {shift} mm"


def huge_size(files: list[Path], rng: np.random.Generator) -> str:
    choice = int(rng.integers(6))
    if choice == 0:
        keyword, value = "Rows", 65535
    elif choice == 1:
        keyword, value = "Columns", 0
    elif choice == 2:
        keyword, value = "Rows", 4096  # plausible size, 16x16 pixels stored
    elif choice == 3:
        keyword, value = "NumberOfFrames", int(rng.choice([999999, 5001, 0]))
    elif choice == 4:
        keyword, value = "NumberOfFrames", -3
    else:
        keyword, value = "Columns", 70000  # does not fit US: raw bytes

    def change(ds: Dataset) -> None:
        if keyword == "Columns" and value > 65535:
            set_raw(ds, keyword, value.to_bytes(4, "little"))
        elif keyword == "NumberOfFrames":
            set_raw(ds, keyword, str(value).encode())
        else:
            setattr(ds, keyword, value)

    n = _each(files, rng, change)
    return f"{keyword} = {value} in {n} file(s)"


def pixel_format(files: list[Path], rng: np.random.Generator) -> str:
    options = [
        ("BitsAllocated", 0),
        ("BitsAllocated", 12),
        ("BitsAllocated", 8),
        ("BitsAllocated", 32),
        ("BitsAllocated", 64),
        ("BitsStored", 17),
        ("HighBit", 40),
        ("PixelRepresentation", 1),
        ("PixelRepresentation", 2),
        ("SamplesPerPixel", 3),
        ("SamplesPerPixel", 0),
        ("PhotometricInterpretation", "RGB"),
        ("PhotometricInterpretation", "PALETTE COLOR"),
        ("PhotometricInterpretation", "MONOCHROME7"),
    ]
    keyword, value = options[int(rng.integers(len(options)))]
    n = _each(files, rng, lambda ds: setattr(ds, keyword, value))
    return f"{keyword} = {value} in {n} file(s)"


def wrong_vr(files: list[Path], rng: np.random.Generator) -> str:
    """Values under a VR their tag does not have (read as what the file says, or as the dictionary VR)."""
    options = [
        ("Rows", "UL", (16).to_bytes(4, "little")),
        ("Rows", "DS", b"16"),
        ("Columns", "FL", np.float32(16).tobytes()),
        ("ImagePositionPatient", "FD", np.array([1.0, 2.0, 3.0]).tobytes()),
        ("PixelSpacing", "US", np.array([1, 1], np.uint16).tobytes()),
        ("SeriesInstanceUID", "UL", int(rng.integers(1, 1 << 32)).to_bytes(4, "little")),  # unique per case
        ("BitsAllocated", "CS", b"SIXTEEN "),
        ("SOPClassUID", "SQ", b""),
        ("ImageOrientationPatient", "SS", np.array([1, 0, 0, 0, 1, 0], np.int16).tobytes()),
    ]
    keyword, vr, value = options[int(rng.integers(len(options)))]
    tag = pydicom.datadict.tag_for_keyword(keyword)

    def change(ds: Dataset) -> None:
        _delete(ds, keyword)
        if vr == "SQ" or ds.file_meta.TransferSyntaxUID.is_implicit_VR:  # implicit VR: the bytes only
            set_raw(ds, keyword, value)
        else:
            ds.add_new(tag, vr, _decoded(vr, value))

    n = _each(files, rng, change)
    return f"{keyword} written as {vr} in {n} file(s)"


def _decoded(vr: str, value: bytes) -> object:
    """The Python value pydicom needs to write ``value`` (little-endian bytes) under ``vr``."""
    if vr in ("DS", "CS"):
        return value.decode().strip()
    dtype = {"UL": "<u4", "US": "<u2", "SS": "<i2", "FL": "<f4", "FD": "<f8"}[vr]
    numbers = np.frombuffer(value, dtype=dtype).tolist()
    return numbers[0] if len(numbers) == 1 else numbers


def foreign_class(files: list[Path], rng: np.random.Generator) -> str:
    value = str(
        rng.choice([BasicTextSRStorage, "1.2.3.4.5", "not a uid", "1.2.840.10008.5.1.4.1.1.4" + "9" * 60])
    )

    def change(ds: Dataset) -> None:
        ds.SOPClassUID = value
        ds.file_meta.MediaStorageSOPClassUID = value

    n = _each(files, rng, change)
    return f"SOPClassUID = {value[:20]}... in {n} file(s)"


def broken_uid(files: list[Path], rng: np.random.Generator) -> str:
    keyword = str(
        rng.choice(["SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"])
    )
    unique = str(int(rng.integers(1 << 30))).encode()  # a broken SeriesInstanceUID must not join other cases
    value = [b"", b" ", b"\x00\x01" + unique, b"1." * 40 + unique, "é".encode() + unique][
        int(rng.integers(5))
    ]
    n = _each(files, rng, lambda ds: set_raw(ds, keyword, value))
    return f"{keyword} = {value[:12]!r} in {n} file(s)"


def declared_syntax(files: list[Path], rng: np.random.Generator) -> str:
    """A transfer syntax in the file meta that the data set's bytes do not follow."""
    value = UID(
        rng.choice([ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, "1.2.3.4", RLELossless])
    )
    path = files[int(rng.integers(len(files)))]
    data = path.read_bytes()
    meta = pydicom.filereader.read_file_meta_info(path)
    group_length = int(meta.FileMetaInformationGroupLength)
    body = data[132 + 12 + group_length :]  # preamble, DICM, the group length element, the meta group
    meta.TransferSyntaxUID = value
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(data[:132] + buffer.getvalue() + body)
    return f"file meta declares {value.name} in 1 file"


def short_pixels(files: list[Path], rng: np.random.Generator) -> str:
    keep = int(rng.choice([0, 2, 100, 510]))

    def change(ds: Dataset) -> None:
        encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated  # keep the first item tag
        ds.PixelData = bytes(ds.PixelData)[: max(keep, 8) if encapsulated else keep]

    n = _each(files, rng, change)
    return f"PixelData cut to {keep} bytes in {n} file(s)"


def long_pixels(files: list[Path], rng: np.random.Generator) -> str:
    extra = int(rng.choice([2, 64, 512]))

    def change(ds: Dataset) -> None:
        ds.PixelData = bytes(ds.PixelData) + b"\x01" * extra

    n = _each(files, rng, change)
    return f"PixelData {extra} bytes too long in {n} file(s)"


def junk_frames(files: list[Path], rng: np.random.Generator) -> str:
    syntax = RLELossless if rng.random() < 0.5 else JPEGBaseline8Bit
    chosen = _pick(files, rng)
    for path in chosen:
        ds = pydicom.dcmread(path)
        fresh = Dataset(ds)  # no memory of the encoding it was read in (big endian cannot become RLE)
        fresh.file_meta = copy.deepcopy(ds.file_meta)
        fresh.file_meta.TransferSyntaxUID = syntax
        fresh.PixelData = encapsulate([b"\x00\x01junk-not-a-codestream" for _ in range(_frames(ds))])
        fresh["PixelData"].VR = "OB"
        fresh.save_as(path, enforce_file_format=True)
    return f"undecodable {UID(syntax).name} frames in {len(chosen)} file(s)"


def _frames(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames") or 1)


def truncate_file(files: list[Path], rng: np.random.Generator) -> str:
    path = files[int(rng.integers(len(files)))]
    size = path.stat().st_size
    keep = int(rng.integers(0, size))
    sd.truncate(path, size - keep)
    return f"1 file cut to {keep} of {size} bytes"


def byte_flips(files: list[Path], rng: np.random.Generator) -> str:
    path = files[int(rng.integers(len(files)))]
    data = bytearray(path.read_bytes())
    count = int(rng.integers(1, 24))
    header_only = rng.random() < 0.7  # most bytes of a file are pixels: aim at the header too
    limit = len(data) - int(np.prod(SHAPE[:2])) * 2 if header_only else len(data)
    for offset in rng.integers(0, max(limit, 1), count):
        data[int(offset)] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(data))
    return f"{count} bit flip(s) in 1 file ({'header' if header_only else 'anywhere'})"


def mixed_syntax(files: list[Path], rng: np.random.Generator) -> str:
    """Valid: the files of one series in different transfer syntaxes (same pixel values)."""
    names = []
    for path in files:
        syntax = SYNTAXES[int(rng.integers(len(SYNTAXES)))]
        ds = pydicom.dcmread(path)
        fresh = Dataset(ds)  # no memory of the encoding it was read in (pydicom will not convert endianness)
        fresh.file_meta = copy.deepcopy(ds.file_meta)
        sd.save(fresh, path, syntax, np.asarray(ds.pixel_array)[None])
        names.append(UID(syntax).name.split()[0])
    return "syntaxes " + ", ".join(names)


def untouched(files: list[Path], rng: np.random.Generator) -> str:
    """Valid: no damage."""
    return "no change"


def enhanced_damage(files: list[Path], rng: np.random.Generator) -> str:
    """An enhanced image whose functional groups or frame count are damaged."""
    choice = int(rng.integers(5))

    def change(ds: Dataset) -> None:
        if choice == 0:
            del ds.PerFrameFunctionalGroupsSequence
        elif choice == 1:
            ds.NumberOfFrames = int(ds.NumberOfFrames) + 1
        elif choice == 2:
            del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        elif choice == 3:
            item = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
            set_raw(item, "ImagePositionPatient", b"nan\\0\\0")
        else:
            ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:2]

    edit_file(files[0], change)
    return [
        "no per-frame groups",
        "one frame too many",
        "no pixel measures",
        "NaN frame position",
        "2 groups",
    ][choice]


#: name -> (mutation, applies to enhanced images, the result must be valid)
MUTATIONS: dict[str, tuple[Mutation, bool, bool]] = {
    "untouched": (untouched, True, True),
    "mixed_syntax": (mixed_syntax, False, True),
    "drop_tag": (drop_tag, False, False),
    "text_in_ds": (text_in_ds, False, False),
    "wrong_count": (wrong_count, False, False),
    "non_finite": (non_finite, False, False),
    "bad_geometry": (bad_geometry, False, False),
    "same_position": (same_position, False, False),
    "huge_size": (huge_size, True, False),
    "pixel_format": (pixel_format, True, False),
    "wrong_vr": (wrong_vr, False, False),
    "foreign_class": (foreign_class, True, False),
    "broken_uid": (broken_uid, True, False),
    "declared_syntax": (declared_syntax, True, False),
    "short_pixels": (short_pixels, True, False),
    "long_pixels": (long_pixels, True, False),
    "junk_frames": (junk_frames, True, False),
    "truncate_file": (truncate_file, True, False),
    "byte_flips": (byte_flips, True, False),
    "enhanced_damage": (enhanced_damage, True, False),
}


#: the order in which cases take mutations (the options within a mutation are drawn from the case's rng);
#: mutations with many options come more often
SCHEDULE: tuple[str, ...] = tuple(
    name
    for name in MUTATIONS
    for _ in range(3 if name in ("drop_tag", "pixel_format", "byte_flips", "wrong_vr", "text_in_ds") else 1)
)


# -------------------------------------------------------------------------------------------------- cases
def write_case(root: str | Path, index: int, seed: int = 0, mutation: str | None = None) -> FuzzCase:
    """Write case ``index`` of ``seed`` into ``root/<index>-<mutation>/`` (the mutation drawn unless given)."""
    rng = np.random.default_rng([seed, index])
    name = mutation or SCHEDULE[index % len(SCHEDULE)]
    mutate, enhanced_ok, valid = MUTATIONS[name]
    enhanced = name == "enhanced_damage" or (enhanced_ok and rng.random() < 0.2)
    folder = Path(root) / f"{index:04d}-{name}"
    syntax = SYNTAXES[int(rng.integers(len(SYNTAXES)))] if name != "mixed_syntax" else ExplicitVRLittleEndian
    uids = {k: _uid(seed, index, k) for k in ("series", "study", "frame")}
    common = {"shape": SHAPE, "transfer_syntax": syntax, "seed": int(rng.integers(1 << 16))}
    if enhanced:

        def fixed_enhanced_uids(ds: Dataset) -> None:
            ds.SOPInstanceUID = _uid(seed, index, "sop")
            ds.StudyInstanceUID, ds.FrameOfReferenceUID = uids["study"], uids["frame"]

        series = sd.write_enhanced(
            folder, series_uid=uids["series"], name="frames.dcm", edit=fixed_enhanced_uids, **common
        )
    else:

        def fixed_uids(ds: Dataset, k: int) -> None:
            ds.SOPInstanceUID = _uid(seed, index, "sop", k)

        series = sd.write_series(
            folder,
            series_uid=uids["series"],
            study_uid=uids["study"],
            frame_of_reference_uid=uids["frame"],
            modality="CT" if rng.random() < 0.3 else "MR",
            edit=fixed_uids,
            **common,
        )
    detail = mutate(list(series.paths), rng)
    return FuzzCase(folder=folder, mutation=name, detail=f"{UID(syntax).name}: {detail}", valid=valid)


def write_archive(root: str | Path, count: int, seed: int = 0) -> list[FuzzCase]:
    """Write ``count`` cases under ``root`` (the first two untouched, the next two mixed syntaxes)."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    fixed = ["untouched", "untouched", "mixed_syntax", "mixed_syntax"]
    return [write_case(root, n, seed, fixed[n] if n < len(fixed) else None) for n in range(count)]
