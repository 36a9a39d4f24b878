"""What ``input=`` names: a folder (walked by ``discover``), one file, or a prepare manifest (``.jsonl``).

Every case gives a list of archive items (``medrecon.io.archive.Item`` or
``medrecon.manifest.ManifestRecord``, both readable by ``load_item``) with opaque ids, ok or rejected:

- a folder: ``discover(folder)``; rejected items are reported as failed with their reason;
- a ``.jsonl`` file: the manifest's records (optionally one ``split``); rejected records are failed likewise;
- a NIfTI or fastMRI HDF5 file: that file alone, with the id ``discover`` gives it in its own folder;
- any other file (a DICOM image): the series that file belongs to, found by scanning the file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medrecon.errors import UsageError


def _file_item(path: Path) -> Any:
    """One NIfTI/HDF5 file as an ``Item`` (validated from its header), ``None`` for other files."""
    from medrecon.io.archive import Item, item_id
    from medrecon.io.errors import RejectedInput
    from medrecon.io.kspace_h5 import inspect_kspace_h5, is_hdf5
    from medrecon.io.nifti import inspect_nifti, is_nifti_path

    if is_nifti_path(path):
        item = Item(id=item_id("nifti", path.name), format="nifti", paths=[path])
        inspect = inspect_nifti
    elif is_hdf5(path):
        item = Item(id=item_id("h5", path.name), format="h5", paths=[path], modality="MR")
        inspect = inspect_kspace_h5
    else:
        return None
    try:
        info = inspect(path)
    except RejectedInput as err:
        item.status, item.reason, item.detail = "rejected", err.reason.value, err.detail
        return item
    item.shape = tuple(info.shape if hasattr(info, "shape") else info.volume_shape)
    return item


def _dicom_file_item(path: Path) -> Any:
    """The item of the series holding DICOM file ``path`` (its folder is scanned), else its own rejection."""
    from medrecon.io.archive import discover

    found = discover(path.parent)
    for item in found.items:
        if any(Path(p) == path for p in item.paths):
            return item
    raise UsageError(f"input={path} is not part of any series in its folder")


def resolve_inputs(input_path: str, split: str | None = None) -> list[Any]:
    """The items ``input=`` names, in a deterministic order (see the module docstring).

    Raises:
        UsageError: the path does not exist, or a manifest is invalid or has no record in ``split``.
    """
    from medrecon.io.archive import discover
    from medrecon.manifest import ManifestError, read_manifest

    if not input_path:
        raise UsageError("input= is required: a folder, a file, or a manifest (.jsonl)")
    path = Path(os.path.abspath(os.path.expanduser(str(input_path))))
    if not path.exists():
        raise UsageError(f"input={input_path} does not exist")
    if path.is_dir():
        return list(discover(path).items)
    if path.name.lower().endswith(".jsonl"):
        try:
            records = read_manifest(path)
        except ManifestError as err:
            raise UsageError(str(err)) from err
        if split is not None:
            records = [r for r in records if r.split == split]
            if not records:
                raise UsageError(f"manifest {input_path} has no records in split {split!r}")
        return records
    if split is not None:
        raise UsageError("split= selects manifest records; input= is not a manifest (.jsonl)")
    item = _file_item(path)
    return [item if item is not None else _dicom_file_item(path)]
