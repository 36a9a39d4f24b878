"""PSNR / SSIM of the classical baselines on held-out axial slices of the bundled sample scan, for every task.

    python scripts/baseline_table.py [--sample PATH] [--json OUT.json]   # PYTHONPATH=. in a checkout

The sample scan (MNI ICBM152 2009a T1 template, 1 mm) is block-averaged to 2 mm, centre-cropped to a multiple
of 8 voxels (96 x 112 x 88) and encoded to [-1, 1] by its 0.5 / 99.5 percentiles (``medrecon.data.encoder``).
Every 2D task degrades the stack of axial slices ``EVAL_SLICES`` (one seed, a fresh mask / noise per slice);
``thick_slices`` degrades the whole volume in 3D (4 axial slices averaged) and is scored on the same slices.
Metrics follow fastMRI (``medrecon.evaluate.metrics``) on [0, 1]-scaled intensities (decoded ``(x + 1) / 2``):
PSNR over the slice stack with data range = its maximum, SSIM per slice averaged. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medrecon.baselines import BASELINES, applicable_baselines
from medrecon.data.encoder import Encoder
from medrecon.evaluate.metrics import psnr, ssim
from medrecon.physics import TASK_NAMES, Task, build_task
from medrecon.physics.resample import block_mean

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "medrecon" / "assets" / "mni_icbm152_t1_09a.nii.gz"
EVAL_SLICES = tuple(range(24, 64, 5))  # axial indices of the 2 mm volume evaluated (8 slices)
SEED = 0


def load_sample_volume(path: Path = SAMPLE) -> np.ndarray:
    """The sample scan at 2 mm, cropped to a multiple of 8 voxels, encoded to [-1, 1]: ``(96, 112, 88)``."""
    array = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    even = tuple(slice(0, n // 2 * 2) for n in array.shape)
    vol = block_mean(torch.from_numpy(array[even])[None, None], (2, 2, 2))[0, 0].numpy()
    crop = []
    for n in vol.shape:
        m = n // 8 * 8
        crop.append(slice((n - m) // 2, (n - m) // 2 + m))
    vol = vol[tuple(crop)]
    return Encoder(kind="percentile", low_pct=0.5, high_pct=99.5).fit_volume(vol).encode(vol)


def task_for(name: str) -> Task:
    """The benchmarked configuration of a task: the yaml defaults, ``thick_slices`` in 3D."""
    return build_task(name, spatial_dims=3) if name == "thick_slices" else build_task(name)


def degrade(task: Task, vol: np.ndarray):
    """``(x, meas)``: the evaluated input of ``task`` (axial slice batch, or the whole volume in 3D)."""
    gen = torch.Generator().manual_seed(SEED)
    if task.spatial_dims == 3:
        x = torch.from_numpy(vol)[None, None]
    else:
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol[:, :, list(EVAL_SLICES)], 2, 0)))[:, None]
    return x, task.degrade(x, gen)


def eval_stack(x: torch.Tensor) -> np.ndarray:
    """Reconstruction on the task grid -> ``(slices, H, W)`` on [0, 1]-scaled intensities."""
    if x.ndim == 5:
        x = x[0, 0][:, :, list(EVAL_SLICES)].permute(2, 0, 1)
    else:
        x = x[:, 0]
    return ((x.detach().cpu().double() + 1.0) / 2.0).numpy()


def run(vol: np.ndarray) -> list[dict]:
    rows = []
    for name in TASK_NAMES:
        task = task_for(name)
        x, meas = degrade(task, vol)
        gt = eval_stack(x)
        rng = float(gt.max())
        for baseline in applicable_baselines(task):
            start = time.perf_counter()
            rec = eval_stack(BASELINES[baseline](task, meas))
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "task": name if task.spatial_dims == 2 else f"{name} (3D)",
                    "baseline": baseline,
                    "psnr": psnr(gt, rec, data_range=rng),
                    "ssim": ssim(gt, rec, data_range=rng),
                    "seconds": seconds,
                }
            )
            print(
                f"{name:>13} {baseline:>12}  {rows[-1]['psnr']:6.2f} dB  {rows[-1]['ssim']:.4f}",
                file=sys.stderr,
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| task | baseline | PSNR (dB) | SSIM |", "|---|---|---:|---:|"]
    lines += [f"| {r['task']} | {r['baseline']} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="the sample NIfTI (default: bundled)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(load_sample_volume(args.sample))
    print(markdown(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
