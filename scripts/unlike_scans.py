"""Build the archive of real scans unlike the training template, offline, and prepare its manifest.

    python scripts/unlike_scans.py OUT        # PYTHONPATH=. in a checkout
    python scripts/unlike_scans.py OUT_VAL --set validation   # three other scans, for choosing settings

Writes ``OUT/scans/``, ``OUT/SOURCES.md`` (package versions, file digests) and ``OUT/manifest.jsonl``. The scans
(``medrecon.evaluate.unlike`` has the details), all from the installed packages, nothing downloaded:

- nibabel ``tests/data/example4d.nii.gz`` (its first frame; a real 4D MRI series, 2 x 2 x 2.2 mm) and
  ``tests/data/anatomical.nii`` (an SPM-normalised T1 brain, 2 mm): nibabel's MIT licence;
- pydicom ``data/test_files/MR_small.dcm`` and ``CT_small.dcm`` (single slices downsized from NEMA's WG04
  samples) and ``examples_overlay.dcm`` (an abdominal Siemens MR slice from GDCM's test data, cropped):
  pydicom's MIT licence; its test-file README: "I believe there is no restriction on using any of these files
  in this manner". Their authors replaced the patient names.

The manifest comes from

    medrecon prepare input=OUT/scans manifest=OUT/manifest.jsonl split.train=0 split.val=0 split.test=1

so every scan is in the ``test`` split and is evaluated whole:

    medrecon evaluate manifest=OUT/manifest.jsonl checkpoint=FILE out=DIR split=test slice_split=null

Nothing is downloaded. Exit code 1 when no scan is installed or when ``prepare`` refuses one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from medrecon.evaluate.unlike import SCANS, VALIDATION_SCANS, build_unlike_archive

ALL_TEST = ("split.train=0", "split.val=0", "split.test=1")


def prepare_command(archive: Path, manifest: Path) -> list[str]:
    """The ``medrecon prepare`` argument list that puts every scan of ``archive`` in the test split."""
    return ["prepare", f"input={archive}", f"manifest={manifest}", *ALL_TEST]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="output folder (scans/, SOURCES.md, manifest.jsonl)")
    parser.add_argument(
        "--set",
        choices=("test", "validation"),
        default="test",
        help="test: the five scans docs/results.md reports; validation: three other scans for choosing settings",
    )
    args = parser.parse_args(argv)

    built = build_unlike_archive(args.out, VALIDATION_SCANS if args.set == "validation" else SCANS)
    for name, reason in built.missing:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not built.written:
        print(
            "no bundled scan found: are nibabel and pydicom installed with their test data?", file=sys.stderr
        )
        return 1
    manifest = built.root / "manifest.jsonl"
    command = prepare_command(built.archive, manifest)
    print("medrecon " + shlex.join(command))
    done = subprocess.run([sys.executable, "-m", "medrecon", *command], check=False)
    if done.returncode != 0:
        return done.returncode
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    refused = [r for r in records if r["status"] != "ok"]
    for r in refused:
        print(f"refused: {r['paths']}: {r['reason']} {r['detail']}", file=sys.stderr)
    print(f"{len(records) - len(refused)} scans ready: {manifest} (provenance: {built.root / 'SOURCES.md'})")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
