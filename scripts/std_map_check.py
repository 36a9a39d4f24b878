"""Check (not a test): how well a ``samples=K`` standard-deviation map tracks the actual error, on held-out slices.

For one checkpoint and sampler setting, the held-out slices of a ground-truth volume are degraded with the
checkpoint's task, reconstructed with ``samples`` posterior draws (``medrecon.recon.methods.DiffusionMethod``,
data-consistency guidance, one seed per slice, as reconstruct does) and compared with the truth in its own
intensity units, on the anatomy (``medrecon.evaluate.metrics.foreground_mask``):

- ``psnr``: of the mean of the draws (fastMRI convention, the volume's data range);
- ``std_mean``: the mean predicted std, as a fraction of the data range;
- ``err_mean``: the mean absolute error of the mean, likewise (a calibrated std is of that order);
- ``corr``: Pearson correlation of the std with the absolute error, voxel by voxel (does it point at the errors);
- ``within_1std`` / ``within_2std``: fraction of voxels whose error is at most 1 / 2 predicted std (a Gaussian
  posterior: 0.68 / 0.95);
- ``nfe``: network evaluations per slice (steps x samples).

A distilled checkpoint samples on its own grid (renoised draws); ``--steps``, ``--sigma-refine`` and
``--renoise`` set the ``mmse`` sampler of any other checkpoint.

    python scripts/std_map_check.py --checkpoint CKPT --truth demo/nifti/mni_t1.nii.gz --slices 36 49 --samples 8
    python scripts/std_map_check.py --checkpoint TEACHER ... --steps 2 --sigma-refine 0.05 --renoise 1
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from medrecon.checkpoint import load_checkpoint
    from medrecon.diffusion.guidance import GuidanceConfig
    from medrecon.diffusion.samplers import build_sampler
    from medrecon.evaluate.metrics import foreground_mask, psnr, volume_data_range
    from medrecon.io.nifti import read_nifti
    from medrecon.recon.methods import DiffusionMethod

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--truth", required=True, help="ground-truth NIfTI volume (slices along axis 2)")
    p.add_argument("--slices", type=int, nargs=2, required=True, metavar=("START", "STOP"))
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--sigma-refine", type=float, default=0.05)
    p.add_argument("--renoise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_checkpoint(args.checkpoint)
    truth = read_nifti(args.truth).array.astype(np.float32)
    encoder = loaded.encoder.for_volume(truth)
    gt = np.moveaxis(truth, 2, 0)[args.slices[0] : args.slices[1]]  # (S, H, W)
    x = encoder.encode(torch.from_numpy(np.ascontiguousarray(gt))[:, None])
    seeds = [args.seed + s for s in range(*args.slices)]
    with torch.no_grad():
        meas = loaded.task.degrade(x, torch.Generator().manual_seed(args.seed))
    sampler = build_sampler(
        "mmse", args.steps, sigma_max=10.0, rho=2.0, sigma_refine=args.sigma_refine, renoise=args.renoise
    )
    method = DiffusionMethod(loaded.precond, loaded.task, sampler, GuidanceConfig("dc"), samples=args.samples)
    mean, std = method(meas, None, seeds)
    scale = float(encoder.high - encoder.low) / 2.0  # encoded units -> scanner units
    pred = encoder.decode(mean)[:, 0].numpy()
    std_units = (std[:, 0] * scale).numpy()
    data_range = volume_data_range(gt)
    mask = foreground_mask(gt)
    err = np.abs(pred - gt)[mask]
    s = std_units[mask]
    result = {
        "checkpoint": args.checkpoint.rsplit("/", 1)[-1],
        "sampler": method.sampler.name,
        "grid": [round(float(v), 5) for v in method.sampler.sigmas().tolist()],
        "renoise": float(method.sampler.renoise),
        "samples": args.samples,
        "nfe": int(method.sampler.steps) * args.samples,
        "psnr": round(psnr(gt, pred, data_range), 3),
        "std_mean": round(float(s.mean()) / data_range, 5),
        "err_mean": round(float(err.mean()) / data_range, 5),
        "corr": round(float(np.corrcoef(s, err)[0, 1]), 4),
        "within_1std": round(float((err <= s).mean()), 4),
        "within_2std": round(float((err <= 2 * s).mean()), 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
