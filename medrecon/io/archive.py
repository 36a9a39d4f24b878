"""Find every scan under a folder (headers only) and load one of them on demand.

``discover(root)`` walks ``root`` recursively (sorted, not following folder links, skipping names that start
with ``.``), classifies each file — NIfTI by name (``.nii``, ``.nii.gz``), HDF5 by its signature
``\\x89HDF\\r\\n\\x1a\\n``, anything else is a DICOM candidate — calls ``scan_dicom`` once over all DICOM
candidates and inspects NIfTI and HDF5 headers. No pixel data is decoded (a ``.nii.gz`` stream is decompressed
and discarded to detect truncation; DICOM images at one position are compared by their pixel bytes, see
``medrecon.io.dicom``). Every file ends up in exactly one ``Item``: a volume (ok or rejected with a reason) or
a refused file (e.g. ``not_dicom``). ``file_item(path)`` judges one file the same way (the item it belongs to
in a scan of its folder).

One verdict for every entry path: ``discover`` and ``file_item`` run the readers' own header checks (every
rule that does not need the pixels, duplicates included), and ``load_item`` reads through the same readers,
which repeat those checks; so ``prepare``, ``reconstruct`` (folder, file or manifest) and ``evaluate`` refuse
an input with the same reason code.

Ids are opaque and stable: ``"s-" + sha256(kind, key)[:16]`` where the key is the DICOM series key (a hash of
the SeriesInstanceUID and the reader's split key) for a series, and the file's path relative to ``root``
(POSIX form) for everything else. The same archive gives the same ids on every run and machine, wherever it is
mounted; the UIDs and paths used as hash input cannot be read back from the id. Should two items ever share an
id, the relative folder (then the relative path) of their first file is added to the hash input.

``load_item`` turns an ok item (or manifest record) into a ``Volume``: DICOM by re-scanning the recorded files
(headers) and ``read_dicom_series``; NIfTI by ``read_nifti``; fastMRI HDF5 by ``kspace_volume`` (the stored
ground truth, else the root-sum-of-squares of the inverse FFT; see ``medrecon.io.kspace_h5``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom

from medrecon.io.dicom import DicomSeries, read_dicom_series, scan_dicom
from medrecon.io.dicom_header import quiet_pydicom
from medrecon.io.errors import Reason, RejectedInput
from medrecon.io.finite import NonFinite, apply_policy
from medrecon.io.kspace_h5 import inspect_kspace_h5, is_hdf5, kspace_volume
from medrecon.io.nifti import inspect_nifti, is_nifti_path, read_nifti
from medrecon.volume import Volume


@dataclass
class Item:
    """One volume found in an archive (or one file refused before it could be part of one).

    Attributes:
        id: opaque stable id (``s-`` + 16 hex digits).
        format: ``dicom``, ``nifti`` or ``h5`` (unrecognised files are DICOM candidates, so ``dicom``).
        paths: absolute paths; a DICOM series in slice order (exact duplicates left out).
        modality: ``MR``, ``CT``, ... or ``None`` (NIfTI does not record it).
        shape: ``(I, J, K)`` of the volume ``load_item`` returns, ``None`` when unknown.
        spacing: mm along those axes, ``None`` when unknown.
        status: ``ok`` or ``rejected``.
        reason: ``Reason`` code when rejected.
        detail: a sentence without patient data.
        group: a hash that groups items of one patient (or study) so splits can keep them together; never
            written out. Defaults to the id.
        nonfinite: NaN/+inf/-inf voxel counts when inspection counted them (NIfTI), else ``None``.
        duplicates: DICOM files left out as verified copies of files in ``paths``; never written out.
    """

    id: str
    format: str
    paths: list[Path]
    modality: str | None = None
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    status: str = "ok"
    reason: str | None = None
    detail: str = ""
    group: str = ""
    nonfinite: NonFinite | None = None
    duplicates: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.id


@dataclass
class Discovery:
    """The result of ``discover``: the root and its items in a deterministic order (volumes first)."""

    root: Path
    items: list[Item] = field(default_factory=list)

    @property
    def ok(self) -> list[Item]:
        return [i for i in self.items if i.status == "ok"]

    @property
    def rejected(self) -> list[Item]:
        return [i for i in self.items if i.status != "ok"]

    def counts(self) -> Counter[tuple[str, str, str]]:
        """``(format, status, reason or "")`` -> number of items."""
        return Counter((i.format, i.status, i.reason or "") for i in self.items)


class ItemLike(Protocol):
    id: str
    format: str
    paths: list[Path]
    shape: tuple[int, ...] | None
    status: str
    reason: str | None
    detail: str


def item_id(kind: str, key: str) -> str:
    """``"s-"`` + the first 16 hex digits of sha256(kind NUL key)."""
    return "s-" + hashlib.sha256(f"{kind}\0{key}".encode()).hexdigest()[:16]


def walk_files(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Regular files under ``root`` in sorted order, skipping hidden names and folder links."""
    skip = {os.path.abspath(p) for p in exclude}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith(".") or os.path.abspath(path) in skip or not os.path.isfile(path):
                continue
            files.append(Path(os.path.abspath(path)))
    return files


class ScanProgress(Protocol):
    """What ``discover`` reports its progress to (a ``tqdm`` bar is one)."""

    def reset(self, total: int | None = None) -> object: ...

    def update(self, n: float | None = 1) -> object: ...


def discover(
    root: str | os.PathLike[str], *, exclude: Iterable[Path] = (), progress: ScanProgress | None = None
) -> Discovery:
    """Classify and validate every file under ``root`` from headers only (see the module docstring).

    Args:
        root: the archive folder.
        exclude: files to leave out (e.g. the manifest being written inside the archive).
        progress: told the number of files once the folder is walked (``reset(total=N)``), then advanced by
            one per file examined (``update(1)``): a tqdm bar shows files/s and the ETA.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    nifti, h5, candidates = [], [], []
    files = walk_files(root, exclude)
    if progress is not None:
        progress.reset(total=len(files))
    for path in files:
        if is_nifti_path(path):
            nifti.append(path)
        elif is_hdf5(path):
            h5.append(path)
        else:
            candidates.append(path)
    items = _dicom_items(root, candidates, progress) if candidates else []
    for path in nifti:
        items.append(_nifti_item(root, path))
        if progress is not None:
            progress.update(1)
    for path in h5:
        items.append(_h5_item(root, path))
        if progress is not None:
            progress.update(1)
    _make_unique(items, root)
    return Discovery(root=root, items=items)


def file_item(path: str | os.PathLike[str]) -> Item | None:
    """The item one file belongs to, judged exactly as ``discover`` judges it in the file's folder.

    A NIfTI or fastMRI HDF5 file is an item of its own, with the id ``discover(path.parent)`` gives it; any
    other file is a DICOM candidate and stands for the series that holds it (or its own rejection), found by
    scanning its folder. ``None`` when no item of that folder holds the file.
    """
    path = Path(os.path.abspath(path))
    if is_nifti_path(path):
        return _nifti_item(path.parent, path)
    if is_hdf5(path):
        return _h5_item(path.parent, path)
    for item in discover(path.parent).items:
        if path in item.paths or path in item.duplicates:
            return item
    return None


def load_item(item: ItemLike, *, keep_nan: bool = False) -> Volume:
    """Read the pixels of an ok item or manifest record (absolute paths) into a ``Volume``.

    ``meta["id"]`` is set to the item's id. The non-finite policy of ``medrecon.io.finite`` is applied to
    every format: NaN voxels become the background value (``meta["nonfinite"]`` counts them,
    ``meta["nan_fill"]`` holds the value), +/-inf and all-NaN volumes are refused.

    Args:
        item: the item or record.
        keep_nan: leave NaN voxels in place (still counted and checked), for a caller that must know where
            the data is missing (evaluation scores finite ground truth only).

    Raises:
        RejectedInput: the item was rejected by prepare (its reason), or the files no longer match what was
            recorded (``unreadable``), or the reader refuses them now (``non_finite_values`` included).
    """
    if item.status != "ok":
        raise RejectedInput(_reason(item.reason), item.detail or "rejected when the archive was prepared")
    if item.format == "nifti":
        volume = read_nifti(item.paths[0])
    elif item.format == "h5":
        volume = kspace_volume(item.paths[0])
    elif item.format == "dicom":
        volume = read_dicom_series(_rescan_series(item))
    else:
        raise ValueError(f"unknown item format {item.format!r}; expected dicom, nifti or h5")
    if item.shape is not None and tuple(volume.shape[:3]) != tuple(item.shape):
        raise RejectedInput(
            Reason.UNREADABLE,
            f"the files now give shape {volume.shape[:3]}, the manifest recorded {tuple(item.shape)}: "
            "the archive changed since prepare",
        )
    volume.array, notes = apply_policy(volume.array, keep_nan=keep_nan)
    volume.meta.update(notes)
    volume.meta["id"] = item.id
    return volume


def _rescan_series(item: ItemLike) -> DicomSeries:
    scan = scan_dicom(item.paths)
    if scan.file_rejects:
        _, first = scan.file_rejects[0]
        raise RejectedInput(first.reason, f"{len(scan.file_rejects)} file(s) of the series are now refused")
    # one enhanced multi-frame file can hold several stacks (echoes): pick the one this item was made from
    matching = [s for s in scan.series if item_id("dicom", s.key) == item.id]
    candidates = matching or scan.series
    if len(candidates) != 1:
        raise RejectedInput(
            Reason.UNREADABLE, f"the recorded files now form {len(scan.series)} series: the archive changed"
        )
    series = candidates[0]
    if series.reject is not None:
        raise series.reject
    return series


def _reason(code: str | None) -> Reason:
    try:
        return Reason(code)
    except ValueError:
        return Reason.UNREADABLE


def _rel(root: Path, path: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _dicom_items(root: Path, candidates: list[Path], progress: ScanProgress | None = None) -> list[Item]:
    scan = scan_dicom(candidates, progress=progress)
    items = []
    for series in scan.series:
        item = Item(
            id=item_id("dicom", series.key),
            format="dicom",
            paths=[Path(p) for p in series.paths],
            modality=series.modality or None,
            shape=tuple(int(s) for s in series.shape) if series.shape else None,
            spacing=tuple(float(s) for s in series.spacing) if series.spacing else None,
            group=_dicom_group(series),
            duplicates=[Path(p) for p in series.dropped_duplicates],
        )
        notes = []
        if series.dropped_duplicates and series.reject is None:
            notes.append(f"{len(series.dropped_duplicates)} identical duplicate file(s) ignored")
        if series.multiframe:
            notes.append("multi-frame")
        if series.reject is not None:
            item.status = "rejected"
            item.reason = series.reject.reason.value
            notes.insert(0, series.reject.detail)
        item.detail = "; ".join(n for n in notes if n)
        items.append(item)
    for path, reject in scan.file_rejects:
        items.append(
            Item(
                id=item_id("file", _rel(root, Path(path))),
                format="dicom",
                paths=[Path(path)],
                status="rejected",
                reason=reject.reason.value,
                detail=reject.detail,
            )
        )
    return items


def _dicom_group(series: DicomSeries) -> str:
    """A hash of the patient (else study) the series belongs to, read from one header; "" when unknown."""
    try:
        with quiet_pydicom():  # its warnings about invalid values would quote the PatientID
            ds = pydicom.dcmread(
                series.paths[0],
                stop_before_pixels=True,
                specific_tags=["PatientID", "StudyInstanceUID"],
                force=True,
            )
            patient = str(ds.get("PatientID", "") or "").strip()
            study = str(ds.get("StudyInstanceUID", "") or "").strip()
    except Exception:  # the reader already accepted or judged the file; grouping is best effort
        return ""
    if patient:
        return item_id("patient", patient)
    return item_id("study", study) if study else ""


def _nifti_item(root: Path, path: Path) -> Item:
    item = Item(id=item_id("nifti", _rel(root, path)), format="nifti", paths=[path])
    try:
        info = inspect_nifti(path)
    except RejectedInput as err:
        item.status, item.reason, item.detail = "rejected", err.reason.value, err.detail
        return item
    item.shape, item.spacing = info.shape, info.spacing
    item.nonfinite = info.nonfinite
    return item


def _h5_item(root: Path, path: Path) -> Item:
    item = Item(id=item_id("h5", _rel(root, path)), format="h5", paths=[path], modality="MR")
    try:
        info = inspect_kspace_h5(path)
    except RejectedInput as err:
        item.status, item.reason, item.detail = "rejected", err.reason.value, err.detail
        return item
    item.shape, item.spacing = info.volume_shape, info.volume_spacing
    item.detail = ("ground truth " + info.target_key) if info.target_key else "image = RSS of the inverse FFT"
    if info.patient_key:
        item.group = info.patient_key
    return item


def _make_unique(items: list[Item], root: Path) -> None:
    """Disambiguate colliding ids deterministically (by the relative folder of the first file)."""
    counts = Counter(i.id for i in items)
    for item in items:
        if counts[item.id] > 1:
            item.id = item_id(item.format, f"{item.id}\0{_rel(root, item.paths[0].parent)}")
    counts = Counter(i.id for i in items)
    for item in items:
        if counts[item.id] > 1:  # same folder too: fall back to the first file's relative path
            item.id = item_id(item.format, f"{item.id}\0{_rel(root, item.paths[0])}")
