"""How the bundled 2 mm ``demo_sr4x`` model fares on the same anatomy at 1, 2 and 4 mm, with ``spacing=native``
and ``spacing=auto`` (offline, CPU, a few minutes).

    python scripts/spacing_check.py OUT [--sampler mmse --steps 5]     # PYTHONPATH=. in a checkout

The demo model was trained on the bundled template block-averaged to 2 mm (docs/results.md); its weights were
written before checkpoints recorded a training card, so the script stores a copy of them, ``OUT/demo_sr4x_2mm.
safetensors``, with the card its training would have written today (2 mm isotropic volumes, in-plane range
2-2 mm). It then writes the template's brain crop at 1, 2 and 4 mm (``medrecon.sample.sample_volume``) and
evaluates each on the model's held-out slab only (2 mm slices 36-48, the same anatomy at 1 mm: 72-97, at 4 mm:
18-24), once per spacing mode, with ``bicubic`` and ``diffusion``. The 1 and 4 mm volumes lie outside the
tolerance band (1.33-3 mm): ``auto`` resamples their measurement to the 8 mm grid the model was trained on
and its 2 mm output back. Prints a table of PSNR/SSIM and writes ``OUT/spacing_check.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from medrecon.card import DataSummary, TrainingCard
from medrecon.checkpoint import load_checkpoint, load_weights, save_checkpoint
from medrecon.demo import demo_checkpoint
from medrecon.io.nifti import write_nifti
from medrecon.manifest import ManifestRecord, write_manifest
from medrecon.sample import sample_volume

SLABS = {1: (72, 98), 2: (36, 49), 4: (18, 25)}  # [start, stop) of the held-out test slab at each spacing


def carded_demo(out: Path) -> Path:
    """A copy of the demo sr4x weights with the training card of its 2 mm training volume."""
    src = demo_checkpoint("sr4x")
    loaded = load_checkpoint(src)
    shape = tuple(int(n) for n in sample_volume(2).array.shape)
    spacing = (2.0, 2.0, 2.0)
    card = TrainingCard(
        data=DataSummary(
            volumes=1, items=41, val_items=4, modalities={"MR": 1}, shape_min=shape, shape_max=shape,
            spacing_median=spacing, spacing_min=spacing, spacing_max=spacing, patch=(64, 64),
            plane_spacing=(2.0, 2.0),
        )
    )  # fmt: skip
    path = out / "demo_sr4x_2mm.safetensors"
    save_checkpoint(
        path, raw=load_weights(src, "raw"), ema=load_weights(src, "ema"), spec=loaded.spec,
        encoder=loaded.encoder, config=loaded.config, step=loaded.step, card=card,
    )  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sampler", default="mmse")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = carded_demo(out)
    results = []
    for mm, (start, stop) in SLABS.items():
        volume = sample_volume(mm)
        scans = out / f"{mm}mm"
        scans.mkdir(exist_ok=True)
        path = scans / "template.nii.gz"
        write_nifti(volume, path)
        spacing = tuple(float(s) for s in np.linalg.norm(volume.affine[:3, :3], axis=0))
        record = ManifestRecord(
            f"mni-{mm}mm", "nifti", [path], "MR", volume.array.shape, spacing, "test", "ok"
        )
        manifest = write_manifest(scans / "manifest.jsonl", [record])
        for mode in ("native", "auto"):
            report_dir = scans / mode
            command = [
                sys.executable, "-m", "medrecon", "evaluate", f"manifest={manifest}", f"out={report_dir}",
                f"checkpoint={checkpoint}", "methods=[bicubic,diffusion]", "slice_split=null",
                f"slices=[{start},{stop}]", f"sampler={args.sampler}", f"sampler.steps={args.steps}",
                f"spacing={mode}", "device=cpu", "figures.volumes=1",
            ]  # fmt: skip
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            report = json.loads((report_dir / "report.json").read_text())
            for method, entry in report["methods"].items():
                results.append(
                    {"spacing_mm": mm, "mode": mode, "method": method, "slices": stop - start,
                     "psnr": entry["psnr"], "ssim": entry["ssim"],
                     "flagged": bool(report["config"]["spacing"]["outside"])}
                )  # fmt: skip
    (out / "spacing_check.json").write_text(json.dumps(results, indent=2))
    print(f"{'spacing':>8} {'mode':>7} {'method':>10} {'PSNR dB':>8} {'SSIM':>7}  flagged")
    for r in results:
        print(
            f"{r['spacing_mm']:>6} mm {r['mode']:>7} {r['method']:>10} {r['psnr']:>8.2f} {r['ssim']:>7.4f}  "
            f"{'yes' if r['flagged'] else 'no'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
