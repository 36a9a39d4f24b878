"""``medrecon reconstruct`` over a fuzzed DICOM archive (``fuzz_dicom``): a few hundred damaged series, and a
few valid ones, each in its own folder, in one run.

The batch must finish (exit code 3: some items failed, the rest written), every item must end ``ok`` or
``failed`` with a stable reason and a detail, the valid series must reconstruct, no partial or temporary
output may remain, and every file of the archive must belong to an item. No item may fail with the generic
``error`` reason: every damage the fuzzer makes maps to a reason code of ``medrecon.io.errors.Reason``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import fuzz_dicom as fz
import nibabel as nib
import numpy as np
import pytest

from medrecon.cli import run_command
from medrecon.io.errors import Reason
from medrecon.recon.ledger import read_records

CASES = 260  # about 300 items: a damaged file often becomes an item of its own beside the rest of its series
SEED = 0


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """The archive, its cases, the reconstruct output folder, the exit code and the run records."""
    root = tmp_path_factory.mktemp("fuzz") / "archive"
    cases = fz.write_archive(root, CASES, seed=SEED)
    out = tmp_path_factory.mktemp("fuzz_out")
    code = run_command(
        "reconstruct",
        ["progress=false", f"input={root}", f"out={out}", "method=bicubic", "task=sr4x"],
    )
    return root, cases, out, code, read_records(out / "run.jsonl")


def case_of(record) -> Path:
    folders = {Path(p).parent for p in record.input}
    assert len(folders) == 1, f"item {record.id} spans cases {sorted(f.name for f in folders)}"
    return folders.pop()


def test_the_batch_finishes_and_every_item_has_a_stable_reason(fuzzed):
    _, cases, _, code, records = fuzzed
    assert code == 3  # some failed, none crashed the run (a crash is 1)
    assert len(records) >= CASES and len({r.id for r in records}) == len(records)
    reasons = Counter(r.reason for r in records if r.status == "failed")
    print(f"\n{len(records)} items; failed by reason: {dict(reasons.most_common())}")
    assert {r.status for r in records} <= {"ok", "failed"}
    stable = {reason.value for reason in Reason}
    for record in records:
        if record.status == "failed":
            assert record.reason in stable, (record.reason, record.detail, case_of(record).name)
            assert record.detail.strip(), record
        else:
            assert record.reason is None and record.outputs, record
    assert reasons["error"] == 0
    assert len(reasons) >= 10  # the damage reaches many different checks
    assert sum(r.status == "ok" for r in records) >= sum(c.valid for c in cases)


def test_valid_series_reconstruct(fuzzed):
    _, cases, out, _, records = fuzzed
    by_case: dict[Path, list] = {}
    for record in records:
        by_case.setdefault(case_of(record), []).append(record)
    valid = [c for c in cases if c.valid]
    assert len(valid) >= 12 and {c.mutation for c in valid} == {"untouched", "mixed_syntax"}
    for case in valid:
        (record,) = by_case[case.folder]
        assert record.status == "ok", (case.detail, record.reason, record.detail)
        image = nib.load(out / f"{record.id}.nii.gz")
        assert image.shape == (64, 64, 4)  # 16 x 16 x 4, four times finer in plane
        assert np.isfinite(np.asarray(image.dataobj)).all()


def test_outputs_are_complete_and_only_for_ok_items(fuzzed):
    _, _, out, _, records = fuzzed
    ok = {r.id for r in records if r.status == "ok"}
    allowed = {"run.jsonl", "reconstruct.log"} | {f"{i}.nii.gz" for i in ok}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if rel.parts[0] == ".hydra" or path.is_dir():
            continue
        if rel.parts[0] == "dicom":  # dicom/<id>/<files> of ok DICOM items, nothing hidden or temporary
            assert len(rel.parts) == 3 and rel.parts[1] in ok, rel
            assert not rel.parts[2].startswith("."), rel
            continue
        assert len(rel.parts) == 1 and rel.name in allowed, rel  # no *.tmp, no hidden file, no failed item
    assert not [p for p in (out / "dicom").iterdir() if p.name not in ok]
    for item in ok:
        assert np.isfinite(nib.load(out / f"{item}.nii.gz").get_fdata()).all()  # complete, readable


def test_every_file_belongs_to_exactly_one_item(fuzzed):
    root, cases, _, _, records = fuzzed
    files = sorted(p for p in root.rglob("*") if p.is_file())
    listed = [Path(p) for r in records for p in r.input]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(files)
    assert {case_of(r) for r in records} == {c.folder for c in cases}


def test_the_fuzzer_is_deterministic(tmp_path):
    for index in (7, 56, 119):  # text in a DS, byte flips, a damaged enhanced image (see fz.SCHEDULE)
        a = fz.write_case(tmp_path / "a", index, seed=SEED)
        b = fz.write_case(tmp_path / "b", index, seed=SEED)
        assert (a.mutation, a.detail) == (b.mutation, b.detail)
        names = sorted(p.name for p in a.folder.iterdir())
        assert names == sorted(p.name for p in b.folder.iterdir())
        assert all((a.folder / n).read_bytes() == (b.folder / n).read_bytes() for n in names)
