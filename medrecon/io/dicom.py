"""DICOM series: group scanned files into series, validate each stack, read it as a Volume.

:func:`scan_dicom` reads every file's header once (:func:`medrecon.io.dicom_header.read_header`, no pixels),
then

1. groups the images by SeriesInstanceUID (each enhanced multi-frame file on its own; later files with the
   same SOPInstanceUID as an enhanced file are copies of it), then splits each group by
   ImageOrientationPatient (within ``SAME_ORIENTATION_TOL``), echo (EchoNumbers and EchoTime, or
   EffectiveEchoTime) and matrix size; images without an orientation join the largest stack;
2. rejects localizers: an image whose ImageType (or FrameType) holds ``LOCALIZER`` makes its split series
   ``mixed_localizer``, and so does a valid orientation with fewer than half the images of the largest
   orientation of the same SeriesInstanceUID (a scout filed with the stack; an invalid one is
   ``invalid_geometry``); the majority stays a series;
3. orders slices by the projection of ImagePositionPatient on the slice normal -- never by file name or
   InstanceNumber -- and validates the stack (rules and tolerances in :mod:`medrecon.io.dicom_geometry`);
4. rejects the series for the first per-file problem of its files (:mod:`medrecon.io.dicom_header`).

Duplicates (images at one position): the same SOPInstanceUID, or another one with the same file size and
the same AcquisitionNumber, TemporalPositionIdentifier, TriggerTime, DiffusionBValue and rescale, is taken
as a copy: the file that sorts first by path is kept, the others go to ``dropped_duplicates``. Anything else
at one position is ``conflicting_duplicate`` at scan time. :func:`read_dicom_series` then confirms each
dropped copy (same SHA-256 of the raw PixelData bytes and the same rescale, or failing that the same decoded
values) and raises ``conflicting_duplicate`` when it differs. Frames of one multi-frame file at one position
are always ``conflicting_duplicate`` (a temporal or diffusion series).

Reading applies RescaleSlope/RescaleIntercept per slice (per frame for enhanced images; an image without them
takes a single linear Real World Value Mapping, as medrecon writes MR) and returns float32
``(columns, rows, slices)`` with the stack's RAS affine and UID-only meta.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medrecon.io.dicom_geometry import (
    StackGeometry,
    check_orientation,
    check_pixel_spacing,
    position_groups,
    same_orientation,
    same_position,
    slice_normal,
    stack_geometry,
)
from medrecon.io.dicom_header import (
    FileHeader,
    FrameHeader,
    decode_frames,
    physical_values,
    pixel_hash,
    quiet_pydicom,
    read_file,
    read_header,
    voxels_problem,
)
from medrecon.io.errors import Reason, RejectedInput
from medrecon.volume import Volume


@dataclass
class DicomSeries:
    """Header-level description of one series (no pixel data held).

    Attributes:
        key: SHA-256 hex of the SeriesInstanceUID and the split key (orientation, echo, matrix size, and the
            SOPInstanceUID of an enhanced file): opaque, stable across copies of the archive, no patient data.
        paths: the files, in slice order (ascending along the slice normal) when the geometry is known,
            else by path; one file for an enhanced multi-frame series.
        modality: "MR", "CT", ... ("OT" when the tag is missing).
        shape: ``(columns, rows, slices)``, the array shape :func:`read_dicom_series` returns.
        spacing: mm ``(column spacing, row spacing, slice spacing)``; 0.0 where not known (rejected series).
        affine: ``(4, 4)`` voxel -> RAS mm, None when the series was rejected before its geometry was known.
        dropped_duplicates: files left out as copies of a kept file at the same position.
        reject: why the series cannot be read, None when it is ok.
        multiframe: True for an enhanced multi-frame file.
        frames: for a multi-frame series, the 0-based frame indices in slice order; empty otherwise.
    """

    key: str
    paths: list[Path]
    modality: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    dropped_duplicates: list[Path]
    reject: RejectedInput | None
    multiframe: bool = False
    frames: list[int] = field(default_factory=list)


@dataclass
class DicomScan:
    """Everything :func:`scan_dicom` found.

    Attributes:
        series: ok and rejected series, sorted by key.
        file_rejects: files that belong to no series (not DICOM, non-image, unreadable), sorted by path.
    """

    series: list[DicomSeries]
    file_rejects: list[tuple[Path, RejectedInput]]


# -------------------------------------------------------------------------------------------------- grouping


@dataclass
class _Group:
    """The images of one candidate series; ``copies`` are later whole-file copies of an enhanced image."""

    series_uid: str
    split_key: str
    frames: list[FrameHeader]
    localizer: RejectedInput | None
    copies: list[Path] = field(default_factory=list)


def _valid_iop(iop: tuple[float, ...]) -> bool:
    try:
        check_orientation(iop)
    except RejectedInput:
        return False
    return True


def _split(series_uid: str, unit: str, frames: list[FrameHeader]) -> list[_Group]:
    """Split one SeriesInstanceUID (or one multi-frame file) by orientation, echo and matrix size."""
    frames = sorted(frames, key=lambda f: f.sort_key)
    clusters: list[tuple[tuple[float, ...] | None, list[FrameHeader]]] = []
    for frame in frames:
        for reference, members in clusters:
            if (reference is None and frame.iop is None) or (
                reference is not None and frame.iop is not None and same_orientation(reference, frame.iop)
            ):
                members.append(frame)
                break
        else:
            clusters.append((frame.iop, [frame]))
    largest = max((len(m) for ref, m in clusters if ref is not None), default=0)
    oriented = sum(ref is not None for ref, _ in clusters)
    unplaced = [f for ref, members in clusters if ref is None for f in members]
    clusters = [(ref, members) for ref, members in clusters if ref is not None]
    if unplaced and clusters:
        # images without an orientation join the largest stack, which then fails as missing_geometry
        biggest = max(clusters, key=lambda c: len(c[1]))[1]
        biggest.extend(unplaced)
        biggest.sort(key=lambda f: f.sort_key)
    elif unplaced:
        clusters = [(None, unplaced)]
    groups = []
    for reference, members in clusters:
        # a scout has a valid orientation of its own; an invalid one is the image's defect (invalid_geometry)
        minority = (
            oriented > 1 and reference is not None and 2 * len(members) < largest and _valid_iop(reference)
        )
        by_key: dict[tuple[str, int, int], list[FrameHeader]] = {}
        for frame in members:
            by_key.setdefault((frame.echo, frame.file.rows, frame.file.columns), []).append(frame)
        orientation = "none" if reference is None else ",".join(f"{round(v, 4) + 0.0:.4f}" for v in reference)
        for (echo, rows, columns), split_frames in by_key.items():
            localizer = None
            if any(f.localizer for f in split_frames):
                localizer = RejectedInput(Reason.MIXED_LOCALIZER, "ImageType marks these images as LOCALIZER")
            elif minority:
                localizer = RejectedInput(
                    Reason.MIXED_LOCALIZER,
                    f"{len(members)} image(s) in a minority orientation filed with a {largest}-image stack "
                    "of the same series (a localizer?)",
                )
            split_key = f"{unit}|iop={orientation}|echo={echo}|matrix={rows}x{columns}"
            groups.append(_Group(series_uid, split_key, split_frames, localizer))
    return groups


def _group(files: list[FileHeader]) -> list[_Group]:
    """Gather frames per SeriesInstanceUID (each enhanced file alone, its later copies aside), then split."""
    units: dict[tuple[str, str], list[FrameHeader]] = {}
    copies: dict[tuple[str, str], list[Path]] = {}
    for file in sorted(files, key=lambda f: str(f.path)):
        unit = f"instance={file.sop_uid or file.path}" if file.multiframe else ""
        if file.multiframe and (file.series_uid, unit) in units:
            copies.setdefault((file.series_uid, unit), []).append(file.path)
            continue
        units.setdefault((file.series_uid, unit), []).extend(file.frames)
    groups = []
    for (series_uid, unit), frames in units.items():
        for group in _split(series_uid, unit, frames):
            group.copies = copies.get((series_uid, unit), [])
            groups.append(group)
    return groups


# ---------------------------------------------------------------------------------------------------- stacks


@dataclass
class _Stack:
    """A validated stack: kept frames in slice order, dropped copies (each with the frame it copies)."""

    frames: list[FrameHeader]
    duplicates: list[tuple[FrameHeader, FrameHeader]]
    geometry: StackGeometry


def _duplicate_conflict(kept: FrameHeader, other: FrameHeader) -> str | None:
    """Why two images at one position cannot be copies of each other, or None when they may be."""
    if kept.index is not None or other.index is not None:
        return "frames of one multi-frame image share a position (a temporal or diffusion series?)"
    if not same_position(kept.ipp, other.ipp):
        return "two images at the same depth have different in-plane positions"
    if kept.file.sop_uid == other.file.sop_uid:
        return None
    if kept.acquisition != other.acquisition:
        return "two acquisitions at one position (acquisition, temporal, trigger, b-value or rescale differ)"
    if kept.file.size != other.file.size:
        return "two different images at one position"
    return None


def _assemble(frames: list[FrameHeader]) -> _Stack:
    """Order frames along the normal, resolve duplicates, validate the stack (raises ``RejectedInput``)."""
    frames = sorted(frames, key=lambda f: f.sort_key)
    missing = sum(f.iop is None or f.ipp is None or f.pixel_spacing is None for f in frames)
    if missing:
        raise RejectedInput(
            Reason.MISSING_GEOMETRY,
            f"{missing} of {len(frames)} images lack ImageOrientationPatient, ImagePositionPatient "
            "or PixelSpacing",
        )
    for iop in {f.iop for f in frames}:
        check_orientation(iop)
    spacing = check_pixel_spacing(frames[0].pixel_spacing)
    if any(np.max(np.abs(np.subtract(f.pixel_spacing, spacing))) > 1e-4 for f in frames):
        raise RejectedInput(Reason.INVALID_GEOMETRY, "PixelSpacing differs between the images of the series")
    normal = slice_normal(frames[0].iop)
    if not all(np.all(np.isfinite(f.ipp)) for f in frames):
        raise RejectedInput(Reason.DEGENERATE_GEOMETRY, "ImagePositionPatient holds non-finite numbers")
    kept, duplicates = [], []
    for members in position_groups(np.stack([f.ipp for f in frames]), normal):
        first = frames[members[0]]
        kept.append(first)
        for index in members[1:]:
            conflict = _duplicate_conflict(first, frames[index])
            if conflict is not None:
                raise RejectedInput(Reason.CONFLICTING_DUPLICATE, conflict)
            duplicates.append((frames[index], first))
    geometry = stack_geometry(
        kept[0].iop,
        spacing,
        np.stack([f.ipp for f in kept]),
        gantry_tilt_deg=max((f.gantry_tilt for f in kept), key=abs),
        thickness_mm=kept[0].thickness,
    )
    return _Stack(kept, duplicates, geometry)


def _ordered_paths(frames: list[FrameHeader]) -> list[Path]:
    """Best-effort slice order for a rejected group: along the normal when every image has a position."""
    frames = sorted(frames, key=lambda f: f.sort_key)
    if all(f.iop is not None and f.ipp is not None for f in frames):
        try:
            normal = slice_normal(frames[0].iop)
        except RejectedInput:
            return list(dict.fromkeys(f.path for f in frames))
        frames = sorted(frames, key=lambda f: float(f.ipp @ normal))
    return list(dict.fromkeys(f.path for f in frames))


def _series_key(series_uid: str, split_key: str) -> str:
    return hashlib.sha256(f"{series_uid}\x00{split_key}".encode()).hexdigest()


def _series(group: _Group) -> DicomSeries:
    frames = group.frames
    first = min(frames, key=lambda f: f.sort_key).file
    multiframe = first.multiframe
    shape = (first.columns, first.rows, len(frames))
    stack: _Stack | None = None
    reject = voxels_problem(shape)
    reject = reject or next(
        (f.file.problem for f in sorted(frames, key=lambda f: f.sort_key) if f.file.problem), None
    )
    reject = reject or group.localizer
    try:
        stack = _assemble(frames)
    except RejectedInput as err:
        reject = reject or err
    if stack is not None and reject is None:
        try:
            _confirm_copies(stack, group.copies if multiframe else [])
        except RejectedInput as err:  # refused like a conflict the headers show: all its files listed
            reject, stack = err, None
    key = _series_key(group.series_uid, group.split_key)
    if stack is None:
        spacing = frames[0].pixel_spacing
        return DicomSeries(
            key=key,
            paths=_ordered_paths(frames),
            modality=first.modality,
            shape=shape,
            spacing=(0.0, 0.0, 0.0) if spacing is None else (spacing[1], spacing[0], 0.0),
            affine=None,
            dropped_duplicates=[],
            reject=reject,
            multiframe=multiframe,
            frames=sorted(f.index for f in frames if f.index is not None),
        )
    return DicomSeries(
        key=key,
        paths=list(dict.fromkeys(f.path for f in stack.frames)),
        modality=first.modality,
        shape=(first.columns, first.rows, len(stack.frames)),
        spacing=stack.geometry.spacing,
        affine=stack.geometry.affine,
        dropped_duplicates=group.copies if multiframe else [dropped.path for dropped, _ in stack.duplicates],
        reject=reject,
        multiframe=multiframe,
        frames=[f.index for f in stack.frames] if multiframe else [],
    )


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    files: dict[Path, None] = {}
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files.update(dict.fromkeys(p for p in sorted(path.rglob("*")) if not p.is_dir()))
        else:
            files[path] = None
    return sorted(files, key=str)


def scan_dicom(paths: Iterable[str | os.PathLike[str]], *, progress: Any = None) -> DicomScan:
    """Read the headers of ``paths`` (folders are walked) and describe the series they hold.

    Each file is opened once with ``stop_before_pixels=True``; no pixel data is read or decoded. Never raises
    for a bad file: every file ends up in a series (ok or rejected) or in ``file_rejects``. ``progress`` (a
    tqdm bar, or anything with ``update(n)``) advances by one per file read.
    """
    files: list[FileHeader] = []
    file_rejects: list[tuple[Path, RejectedInput]] = []
    with quiet_pydicom():
        for path in _expand(paths):
            try:
                files.append(read_header(path))
            except RejectedInput as err:
                file_rejects.append((path, err))
            if progress is not None:
                progress.update(1)
        series = sorted((_series(group) for group in _group(files)), key=lambda s: s.key)
    return DicomScan(series=series, file_rejects=file_rejects)


def read_dicom_series(series: DicomSeries) -> Volume:
    """Read one scanned series as a float32 ``(columns, rows, slices)`` Volume in physical units.

    The headers are read again with the pixels and must still describe the scanned stack. The affine maps
    ``(i, j, k)`` to RAS mm; ``meta`` holds modality, source format, spacing and UIDs only.

    Raises:
        RejectedInput: the scan's rejection, or a problem only the pixels show (``truncated_pixels``,
            ``decode_error``, ``missing_codec``, ``conflicting_duplicate``, ``implausible_size``).
    """
    if series.reject is not None:
        raise RejectedInput(series.reject.reason, series.reject.detail)
    problem = voxels_problem(series.shape)
    if problem is not None:
        raise problem
    with quiet_pydicom():
        return _read_series(series)


def _read_series(series: DicomSeries) -> Volume:
    files: dict[Path, tuple[Dataset, FileHeader]] = {}
    for path in dict.fromkeys([*series.paths, *series.dropped_duplicates]):
        ds, file = read_file(path)
        if file.problem is not None:
            raise file.problem
        files[path] = ds, file
    if series.multiframe:  # dropped copies of an enhanced file are whole files, compared after reading
        wanted = set(series.frames)
        frames = [f for f in files[series.paths[0]][1].frames if f.index in wanted]
    else:
        frames = [files[path][1].frames[0] for path in files]
    stack = _assemble(frames)
    _check_unchanged(series, stack)
    volume = np.empty(series.shape, dtype=np.float32)
    for path in series.paths:
        ds, file = files[path]
        stored = decode_frames(ds, file)
        for k, frame in enumerate(stack.frames):
            if frame.path == path:
                volume[:, :, k] = physical_values(stored[frame.index or 0], frame).T
    slot = {id(frame): k for k, frame in enumerate(stack.frames)}
    if series.multiframe:
        checks = [
            (path, list(zip(stack.frames, range(len(stack.frames))))) for path in series.dropped_duplicates
        ]
    else:
        checks = [(dropped.path, [(kept, slot[id(kept)])]) for dropped, kept in stack.duplicates]
    for path, targets in checks:
        original_ds = files[targets[0][0].path][0]
        if not _copy_matches(*files[path], targets, pixel_hash(original_ds), lambda k: volume[:, :, k]):
            raise RejectedInput(
                Reason.CONFLICTING_DUPLICATE, "a duplicate at one position holds different pixel values"
            )
    return Volume(array=volume, affine=stack.geometry.affine, meta=_meta(series, stack))


def _check_unchanged(series: DicomSeries, stack: _Stack) -> None:
    """The stack rebuilt from the files at read time must be the one the scan described."""
    if series.multiframe:
        scanned = [(series.paths[0], i) for i in series.frames]
        dropped = series.dropped_duplicates
    else:
        scanned = [(p, None) for p in series.paths]
        dropped = [d.path for d, _ in stack.duplicates]
    if (
        [(f.path, f.index) for f in stack.frames] != scanned
        or sorted(map(str, series.dropped_duplicates)) != sorted(map(str, dropped))
        or series.affine is None
        or not np.allclose(stack.geometry.affine, series.affine, atol=1e-6)
        or tuple(series.shape) != (stack.frames[0].file.columns, stack.frames[0].file.rows, len(stack.frames))
    ):
        raise RejectedInput(
            Reason.INVALID_GEOMETRY, "the files changed since they were scanned; scan them again"
        )


def _copy_matches(
    ds: Dataset,
    copy: FileHeader,
    targets: list[tuple[FrameHeader, int]],
    original_hash: str,
    kept: Callable[[int], np.ndarray],
) -> bool:
    """Whether a dropped copy holds what the kept ``(frame, slice k)`` targets hold.

    True when the raw PixelData bytes (SHA-256) and the rescale are the same, or failing that when the decoded
    physical values equal ``kept(k)``, the ``(columns, rows)`` values of slice ``k`` (a copy stored in another
    transfer syntax); ``kept`` is called only then.
    """
    by_index = {f.index: f for f in copy.frames}
    if any(frame.index not in by_index for frame, _ in targets):
        return False
    same_rescale = all(
        (by_index[f.index].slope, by_index[f.index].intercept) == (f.slope, f.intercept) for f, _ in targets
    )
    if same_rescale and pixel_hash(ds) == original_hash:
        return True
    if (copy.columns, copy.rows) != (targets[0][0].file.columns, targets[0][0].file.rows):
        return False
    stored = decode_frames(ds, copy)
    return all(
        np.array_equal(physical_values(stored[f.index or 0], by_index[f.index]).T, kept(k))
        for f, k in targets
    )


def _confirm_copies(stack: _Stack, whole_file_copies: list[Path]) -> None:
    """Scan time: every image left out as a copy must hold the pixels of the image it copies.

    Headers alone cannot tell a re-exported copy from another image of the same size at one position, and a
    series that is ok at scan time must not turn out ``conflicting_duplicate`` only when (or, for an item
    whose manifest lists only the kept files, never when) its pixels are read. So the files involved in a
    duplicate, and only those, are read: their raw PixelData bytes are compared (SHA-256), and decoded only
    when the bytes differ (another transfer syntax).

    Raises:
        RejectedInput: ``conflicting_duplicate``, or the reading problem of one of those files.
    """
    if whole_file_copies:  # an enhanced file and its later copies: compare every frame
        checks = [(path, list(zip(stack.frames, range(len(stack.frames))))) for path in whole_file_copies]
    else:
        checks = [(dropped.path, [(kept, 0)]) for dropped, kept in stack.duplicates]
    if not checks:
        return
    files: dict[Path, tuple[Dataset, FileHeader]] = {}

    def opened(path: Path) -> tuple[Dataset, FileHeader]:
        if path not in files:
            files[path] = read_file(path)
            if files[path][1].problem is not None:
                raise files[path][1].problem
        return files[path]

    for path, targets in checks:
        original_ds, original = opened(targets[0][0].path)
        kept = _lazy_values(original_ds, original, targets)
        try:
            same = _copy_matches(*opened(path), targets, pixel_hash(original_ds), kept)
        except RejectedInput:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged copy fails its series, never the scan
            raise RejectedInput(
                Reason.UNREADABLE, f"a duplicate image could not be compared ({type(err).__name__})"
            ) from err
        if not same:
            raise RejectedInput(
                Reason.CONFLICTING_DUPLICATE, "two images at one position hold different pixel values"
            )


def _lazy_values(
    ds: Dataset, file: FileHeader, targets: list[tuple[FrameHeader, int]]
) -> Callable[[int], np.ndarray]:
    """``k -> (columns, rows)`` physical values of the target frame at slot ``k``, decoded on first use."""
    frames = {slot: frame for frame, slot in targets}
    decoded: list[np.ndarray] = []

    def values(k: int) -> np.ndarray:
        if not decoded:
            decoded.append(decode_frames(ds, file))
        return physical_values(decoded[0][frames[k].index or 0], frames[k]).T

    return values


def _meta(series: DicomSeries, stack: _Stack) -> dict[str, Any]:
    """Volume meta: modality, source format, spacing and UIDs (no names, IDs or dates)."""
    first = stack.frames[0].file
    dicom_meta: dict[str, Any] = {
        "study_uid": first.study_uid,
        "series_uid": first.series_uid,
        "frame_of_reference_uid": first.frame_of_reference_uid,
        "sop_class_uid": first.sop_class_uid,
        "sop_instance_uids": [f.file.sop_uid for f in stack.frames],
    }
    if series.multiframe:
        dicom_meta["frame_numbers"] = [f.index + 1 for f in stack.frames]  # DICOM frame numbers are 1-based
    return {
        "modality": first.modality,
        "source_format": "dicom",
        "dicom": dicom_meta,
        "spacing": list(stack.geometry.spacing),
    }


def read_dicom_dir(path: str | os.PathLike[str]) -> Volume:
    """Read the single ok DICOM series under a folder.

    Raises:
        ValueError: ``path`` is not a folder, or it holds no series or several ok series.
        RejectedInput: the folder's only series is rejected.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError("read_dicom_dir needs a folder; pass files to scan_dicom instead")
    scan = scan_dicom([root])
    ok = [s for s in scan.series if s.reject is None]
    if len(ok) == 1:
        return read_dicom_series(ok[0])
    if not ok and len(scan.series) == 1:
        reject = scan.series[0].reject
        raise RejectedInput(reject.reason, reject.detail)
    raise ValueError(
        f"the folder holds {len(ok)} readable DICOM series ({len(scan.series) - len(ok)} rejected, "
        f"{len(scan.file_rejects)} non-series files); expected exactly one -- use scan_dicom to choose"
    )
