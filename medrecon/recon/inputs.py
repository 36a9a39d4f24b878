"""What ``input=`` names: a folder (walked by ``discover``), one file, or a prepare manifest (``.jsonl``).

Every case gives a list of archive items (``medrecon.io.archive.Item`` or
``medrecon.manifest.ManifestRecord``, both readable by ``load_item``) with opaque ids, ok or rejected:

- a folder: ``discover(folder)``; rejected items are reported as failed with their reason;
- a ``.jsonl`` file: the manifest's records (optionally one ``split``); rejected records are failed likewise;
- one file: ``file_item(file)``: a NIfTI or fastMRI HDF5 file alone, with the id ``discover`` gives it in its
  own folder; any other file (a DICOM image) stands for the series it belongs to in a scan of its folder.

Every case is judged by the io layer's own checks (``medrecon.io.archive``), so an input gets the verdict and
reason code ``medrecon prepare`` gives it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medrecon.errors import UsageError


def resolve_inputs(input_path: str, split: str | None = None) -> list[Any]:
    """The items ``input=`` names, in a deterministic order (see the module docstring).

    Raises:
        UsageError: the path does not exist, or a manifest is invalid or has no record in ``split``.
    """
    from medrecon.io.archive import discover, file_item
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
    item = file_item(path)
    if item is None:
        raise UsageError(f"input={path} is not part of any series in its folder")
    return [item]
