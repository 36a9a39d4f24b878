"""``medrecon demo``: the main job on the bundled sample scan, offline, in a few minutes on a laptop CPU.

What it does, as the commands a user would type (each step is printed before it runs):

1. ``medrecon sample-data out=OUT/archive``: the bundled MNI ICBM152 2009a T1 template as a DICOM series and a
   NIfTI file (2 mm, ``medrecon.sample``) — the ground truth.
2. A low-resolution acquisition of it: the demo task's forward operator (x4 in-plane area averaging,
   ``medrecon.physics``) applied to the ground truth, written as a DICOM series (``OUT/lowres/``) on the coarser
   grid covering the same field of view.
3. ``medrecon reconstruct input=OUT/lowres checkpoint=DEMO out=OUT/recon``: the demo diffusion model
   super-resolves the low-resolution series (DICOM in; NIfTI and a derived DICOM series out).
4. ``medrecon prepare`` + ``medrecon evaluate``: the ground truth's held-out slab (slices the demo model never
   saw in training) is degraded, reconstructed by the diffusion model and the baselines, and scored
   (PSNR/SSIM/NMSE, fastMRI convention) in ``OUT/eval/report.md`` with figure panels.

Each command runs in its own process, exactly as on the command line.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("medrecon.demo")

DEMO_WEIGHTS = {"sr4x": "demo_sr4x.safetensors", "mri_r4": "demo_mri_r4.safetensors"}


def demo_checkpoint(task: str = "sr4x") -> Path:
    """Path of the bundled demo weights for ``task`` (inside the installed package)."""
    if task not in DEMO_WEIGHTS:
        raise ValueError(f"no demo model for task={task!r}; bundled: {sorted(DEMO_WEIGHTS)}")
    path = Path(str(importlib.resources.files("medrecon") / "assets" / "weights" / DEMO_WEIGHTS[task]))
    if not path.is_file():
        raise FileNotFoundError(f"the demo weights are missing from this installation: {path}")
    return path


def write_lowres_series(ground_truth: Any, task: Any, out_dir: Path) -> Path:
    """Simulate the low-resolution acquisition of ``ground_truth`` with ``task`` and write it as DICOM.

    Args:
        ground_truth: ``Volume`` (I, J, K) in scanner units, I and J divisible by the task's factors.
        task: a 2D super-resolution Task; its ``forward`` is applied slice by slice (axis 2).
        out_dir: the series folder to write.

    Returns:
        ``out_dir``. The coarse grid's affine is the fine one's with voxels ``factor`` times larger, covering the
        same box (``medrecon.recon.geometry.upsampled_affine`` with the inverse factors).
    """
    import torch

    from medrecon.io.dicom_write import write_dicom_series
    from medrecon.physics.base import OperatorParams
    from medrecon.recon.geometry import upsampled_affine
    from medrecon.volume import Volume

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ground_truth.array, 2, 0)))[:, None]  # (K, 1, I, J)
    with torch.no_grad():
        y = task.forward(x.float(), OperatorParams())
    low = np.moveaxis(y[:, 0].numpy(), 0, 2).astype(np.float32)  # (I/f, J/f, K)
    factors = [s / f for s, f in zip(low.shape, ground_truth.array.shape)]
    affine = upsampled_affine(ground_truth.affine, factors)
    volume = Volume(low, affine, {"modality": "MR"})
    write_dicom_series(
        volume,
        out_dir,
        series_description=f"demo low-resolution x{task.scale[0]}",
        modality="MR",
        series_number=2,
        derived=False,
        patient_name="Anonymous^Demo",
        patient_id="DEMO",
        uid_seed="medrecon-demo-lowres",
    )
    return out_dir


def _medrecon(args: list[str]) -> int:
    """Run ``medrecon <args>`` in a child process (as a user would) and return its exit code."""
    shown = "medrecon " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    return subprocess.call([sys.executable, "-m", "medrecon", *args])


def run(cfg: Any) -> int:
    """``medrecon demo [out=medrecon_demo] [device=auto] [sampler=NAME] [steps=N] [samples=K]``."""
    from medrecon.checkpoint import load_checkpoint
    from medrecon.errors import UsageError
    from medrecon.io.dicom import read_dicom_dir

    out = Path(str(cfg.out)).absolute()
    checkpoint = Path(str(cfg.checkpoint)) if cfg.checkpoint else demo_checkpoint(str(cfg.task))
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint={checkpoint} does not exist")
    started = time.perf_counter()
    print(f"medrecon demo: writing everything under {out}")

    archive = out / "archive"
    if _medrecon(["sample-data", f"out={archive}", f"resolution_mm={cfg.resolution_mm}"]) != 0:
        return 1

    lowres = out / "lowres" / "dicom" / "mni_t1_lowres"
    print(f"\n# simulate the low-resolution acquisition -> {lowres.relative_to(out)}", flush=True)
    model = load_checkpoint(checkpoint, device="cpu")
    write_lowres_series(read_dicom_dir(archive / "dicom"), model.task, lowres)

    sampling = [f"sampler={cfg.sampler}", f"sampler.steps={cfg.steps}", f"samples={cfg.samples}"]
    common = [f"checkpoint={checkpoint}", f"device={cfg.device}", f"seed={cfg.seed}", *sampling]
    recon_code = _medrecon(["reconstruct", f"input={out / 'lowres'}", f"out={out / 'recon'}", *common])

    manifest = out / "manifest.jsonl"
    if _medrecon(["prepare", f"input={archive / 'nifti'}", f"manifest={manifest}"]) != 0:
        return 1
    eval_code = _medrecon(["evaluate", f"manifest={manifest}", f"out={out / 'eval'}", *common])

    report = out / "eval" / "report.md"
    print(f"\nmedrecon demo finished in {time.perf_counter() - started:.0f} s")
    print(f"  reconstruction (NIfTI, derived DICOM, run.jsonl): {out / 'recon'}")
    print(f"  evaluation report: {report}")
    print(f"  figures:           {out / 'eval' / 'figures'}")
    if report.is_file():
        print("\n" + report.read_text())
    summary = out / "eval" / "report.json"
    if summary.is_file():
        methods = json.loads(summary.read_text()).get("methods", {})
        ours, bicubic = methods.get("diffusion"), methods.get("bicubic")
        if ours and bicubic:
            verdict = (
                "beats"
                if ours["psnr"] > bicubic["psnr"] and ours["ssim"] > bicubic["ssim"]
                else "does not beat"
            )
            print(
                f"diffusion {verdict} bicubic: PSNR {ours['psnr']:.2f} vs {bicubic['psnr']:.2f} dB, "
                f"SSIM {ours['ssim']:.4f} vs {bicubic['ssim']:.4f}"
            )
    return max(recon_code, eval_code)
