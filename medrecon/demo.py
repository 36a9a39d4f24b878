"""``medrecon demo``: the main job on the bundled sample scan, offline, in a few minutes on a laptop CPU.

What it does, as the commands a user would type (each step is printed before it runs):

1. ``medrecon sample-data out=OUT/archive``: the bundled MNI ICBM152 2009a T1 template as a DICOM series and a
   NIfTI file (2 mm, ``medrecon.sample``) — the ground truth.
2. An acquisition of it, simulated with the model's task (``medrecon.physics``):

   - super-resolution (``task=sr4x``, the default): the forward operator (x4 in-plane area averaging) applied to
     the ground truth, written as a DICOM series (``OUT/lowres/``) on the coarser grid covering the same field
     of view;
   - MRI (``task=mri_r4``): the ground truth's slices Fourier transformed and undersampled with one of the
     task's masks (4x, random lines, 8 % fully sampled centre), written as a single-coil fastMRI-layout HDF5 file
     (``OUT/kspace/``: ``kspace``, ``mask``, an ISMRMRD header with the field of view). A scanner delivers
     k-space, not a low-resolution image series, so that is what the demo reconstructs.

3. ``medrecon reconstruct input=OUT/lowres|OUT/kspace checkpoint=DEMO out=OUT/recon``: the demo diffusion model
   reconstructs the acquisition (NIfTI out, and a derived DICOM series for the DICOM input).
4. ``medrecon prepare`` + ``medrecon evaluate``: the ground truth's held-out slab (slices the demo model never
   saw in training) is degraded, reconstructed by the diffusion model and the baselines, and scored
   (PSNR/SSIM/NMSE, fastMRI convention) in ``OUT/eval/report.md`` with figure panels.

Each command runs in its own process, exactly as on the command line, with the demo's sampler options
(``sampler=NAME``, ``sampler.steps=N`` or ``steps=N``, ``samples=K``), ``device`` and ``seed``.
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


def write_kspace_h5(ground_truth: Any, task: Any, path: Path, seed: int = 0) -> Path:
    """Simulate a single-coil Cartesian MRI acquisition of ``ground_truth`` and write it as a fastMRI file.

    Every slice ``k`` (axis 2) is the image ``ground_truth[:, :, k]`` read as fastMRI's ``(H, W)`` = (rows J,
    columns I), Fourier transformed (centred, orthonormal: ``medrecon.physics.fft.fft2c``) and multiplied by one
    mask drawn from ``task``'s mask function (phase encoding along ``W``; one mask per file, as in fastMRI's
    test data), so reading the file back (``medrecon.io.kspace_h5``) gives a ``(I, J, K)`` volume on the ground
    truth's grid. No noise is added (the demo task has ``noise_std=0``).

    Args:
        ground_truth: ``Volume`` (I, J, K) in scanner units, diagonal (axis-aligned) affine.
        task: an ``MRITask`` (its ``mask_func``).
        path: the ``.h5`` file to write.
        seed: seeds the mask.

    Returns:
        ``path``: datasets ``kspace`` complex64 ``(K, J, I)``, ``mask`` float32 ``(I,)`` and ``ismrmrd_header``
        (encoded and recon space = the image grid, so the file carries the voxel size).
    """
    import h5py
    import torch

    from medrecon.physics.fft import fft2c

    image = torch.from_numpy(np.ascontiguousarray(np.transpose(ground_truth.array, (2, 1, 0))))  # (K, H, W)
    slices, rows, cols = image.shape
    mask = task.mask_func(cols, torch.Generator().manual_seed(int(seed)))  # (W,) 0/1
    kspace = fft2c(image.to(torch.complex64), (-2, -1)) * mask
    col_mm, row_mm, slice_mm = (float(s) for s in ground_truth.spacing)
    space = (
        f"<matrixSize><x>{rows}</x><y>{cols}</y><z>1</z></matrixSize><fieldOfView_mm><x>{rows * row_mm}</x>"
        f"<y>{cols * col_mm}</y><z>{slice_mm}</z></fieldOfView_mm>"
    )
    header = (
        '<?xml version="1.0" encoding="utf-8"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
        f"<encodedSpace>{space}</encodedSpace><reconSpace>{space}</reconSpace></encoding></ismrmrdHeader>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.numpy().astype(np.complex64))
        f.create_dataset("mask", data=mask.numpy().astype(np.float32))
        f.create_dataset("ismrmrd_header", data=header.encode())
        f.attrs["acquisition"] = "demo_singlecoil"
        f.attrs["acceleration"] = float(getattr(task, "acceleration", 0))
    return path


def sampler_overrides(sampler: Any, steps: Any = None) -> list[str]:
    """The command-line options that select ``sampler`` (the demo's ``cfg.sampler``) in reconstruct and
    evaluate: ``sampler=NAME``, ``sampler.steps=N`` (``steps`` wins when given) and every other key that differs
    from ``conf/sampler/NAME.yaml``."""
    import yaml

    from medrecon.confdoc import conf_dir

    values = {str(k): v for k, v in dict(sampler).items()}
    name = str(values["name"])
    shipped = conf_dir() / "sampler" / f"{name}.yaml"
    defaults = yaml.safe_load(shipped.read_text()) if shipped.is_file() else {}
    if steps is not None:
        values["steps"] = int(steps)
    out = [f"sampler={name}", f"sampler.steps={values['steps']}"]
    out += [
        f"sampler.{key}={value}"
        for key, value in values.items()
        if key not in ("_target_", "name", "steps") and defaults.get(key) != value
    ]
    return out


def _medrecon(args: list[str]) -> int:
    """Run ``medrecon <args>`` in a child process (as a user would) and return its exit code."""
    shown = "medrecon " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    return subprocess.call([sys.executable, "-m", "medrecon", *args])


def run(cfg: Any) -> int:
    """``medrecon demo [out=medrecon_demo] [task=sr4x|mri_r4] [device=auto] [sampler=NAME] [sampler.steps=N |
    steps=N] [samples=K]``."""
    from medrecon.checkpoint import load_checkpoint
    from medrecon.errors import UsageError
    from medrecon.io.nifti import read_nifti
    from medrecon.physics.mri import MRITask
    from medrecon.physics.registry import build_task

    out = Path(str(cfg.out)).absolute()
    if cfg.checkpoint:
        checkpoint = Path(str(cfg.checkpoint))
    else:
        task_name = build_task(cfg.task).name
        try:
            checkpoint = demo_checkpoint(task_name)
        except ValueError as err:
            raise UsageError(f"task={task_name}: {err}") from err
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint={checkpoint} does not exist")
    started = time.perf_counter()
    print(f"medrecon demo: writing everything under {out}")

    archive = out / "archive"
    if _medrecon(["sample-data", f"out={archive}", f"resolution_mm={cfg.resolution_mm}"]) != 0:
        return 1

    model = load_checkpoint(checkpoint, device="cpu")
    truth = read_nifti(archive / "nifti" / "mni_t1.nii.gz")
    if isinstance(model.task, MRITask):
        acquired = out / "kspace"
        target = acquired / f"mni_t1_{model.task.name}.h5"
        print(f"\n# simulate the undersampled k-space acquisition -> {target.relative_to(out)}", flush=True)
        write_kspace_h5(truth, model.task, target, seed=int(cfg.seed))
    else:
        acquired = out / "lowres"
        series = acquired / "dicom" / "mni_t1_lowres"
        print(f"\n# simulate the low-resolution acquisition -> {series.relative_to(out)}", flush=True)
        write_lowres_series(truth, model.task, series)

    sampling = [*sampler_overrides(cfg.sampler, cfg.get("steps")), f"samples={cfg.samples}"]
    common = [f"checkpoint={checkpoint}", f"device={cfg.device}", f"seed={cfg.seed}", *sampling]
    common.append(f"blend={cfg.get('blend', 'auto')}")
    recon_code = _medrecon(["reconstruct", f"input={acquired}", f"out={out / 'recon'}", *common])

    manifest = out / "manifest.jsonl"
    if _medrecon(["prepare", f"input={archive / 'nifti'}", f"manifest={manifest}"]) != 0:
        return 1
    eval_code = _medrecon(["evaluate", f"manifest={manifest}", f"out={out / 'eval'}", *common])

    report = out / "eval" / "report.md"
    print(f"\nmedrecon demo finished in {time.perf_counter() - started:.0f} s")
    print(f"  reconstruction (NIfTI, run.jsonl): {out / 'recon'}")
    print(f"  evaluation report: {report}")
    print(f"  figures:           {out / 'eval' / 'figures'}")
    if report.is_file():
        print("\n" + report.read_text())
    summary = out / "eval" / "report.json"
    if summary.is_file():
        line = verdict(json.loads(summary.read_text()).get("methods", {}))
        if line:
            print(line)
    return max(recon_code, eval_code)


#: The classical baseline the demo names in its verdict, per task kind (the first one the report has).
REFERENCE_BASELINES = ("bicubic", "zero_filled", "nlm", "input")


def verdict(methods: dict[str, Any]) -> str:
    """One line: whether the diffusion model beats the task's classical reference (bicubic for
    super-resolution, zero-filled for MRI) in both PSNR and SSIM; empty when the report lacks either."""
    ours = methods.get("diffusion")
    name = next((m for m in REFERENCE_BASELINES if m in methods), None)
    if not ours or name is None:
        return ""
    ref = methods[name]
    beats = ours["psnr"] > ref["psnr"] and ours["ssim"] > ref["ssim"]
    return (
        f"diffusion {'beats' if beats else 'does not beat'} {name}: PSNR {ours['psnr']:.2f} vs "
        f"{ref['psnr']:.2f} dB, SSIM {ours['ssim']:.4f} vs {ref['ssim']:.4f}"
    )
