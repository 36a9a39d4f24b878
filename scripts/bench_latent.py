"""Benchmark (not a test): peak memory and time of one whole-volume reconstruction, latent 3D vs pixel-space 3D
vs 2.5D, on the CPU (or a GPU), one run.

Every method reconstructs the same thick-slice measurement (``thick_slices``, 4 slices averaged) of one volume
of ``--size`` voxels with the default estimator of ``medrecon reconstruct`` (``sampler=mmse``, 5 network
evaluations, ``guidance=dc``), through the same method classes reconstruct uses
(``medrecon.recon.methods``):

- ``latent3d``: ``conf/model/autoencoder_kl.yaml`` (4x per axis, 4 latent channels) and ``unet_tiny`` in 3D on
  its latents, the denoiser in windows of 16^3 latent voxels (a 64^3 training patch), the autoencoder in
  windows of its own training patch (64^3 here), over the whole volume, the decoded output projected onto the
  measurement (``LatentMethod``, as reconstruct runs a latent checkpoint);
- ``latent3d_x2``: the sample-scan recipes' networks (``conf/experiment/latent_ae.yaml``: 2x per axis, 2 latent
  channels, trained on 16^3 patches: 8^3 latent windows for the autoencoder; the denoiser's 32^3 training
  patch: 16^3 latent windows);
- ``pixel3d``: ``unet_tiny`` in 3D on the whole volume at full resolution, one unit (``DiffusionMethod``);
- ``slices25d``: ``unet_tiny`` in 2D with 2.5D context 1 (three neighbouring conditions) on every coronal
  slice, ``--batch`` slices per call (``DiffusionMethod``; the 2D thick-slice model's geometry).

Each method runs in its own child process (so one's memory does not count for another): the peak resident
set size of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the reconstruction, the resident
size before it (imports, weights, the volume) and the seconds of the reconstruction call alone; on a GPU also
``torch.cuda.max_memory_allocated``. Weights are freshly initialised (cost does not depend on them).

    python scripts/bench_latent.py                           # 128x128x96, CPU, 2 threads
    python scripts/bench_latent.py --size 96 96 64 --json out.json
    python scripts/bench_latent.py --device cuda --size 256 256 160
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("latent3d", "latent3d_x2", "pixel3d", "slices25d")
UNET_TINY = {
    "_target_": "medrecon.nn.unet.UNet",
    "channels": [32, 64, 64],
    "num_res_blocks": 1,
    "attention_levels": [False, False, True],
    "num_heads": 4,
    "dropout": 0.0,
}
#: name -> (autoencoder options over conf/model/autoencoder_kl.yaml, the denoiser's and the autoencoder's
#: training patches in image voxels)
LATENT = {
    "latent3d": ({}, (64, 64, 64), (64, 64, 64)),
    "latent3d_x2": (
        {"channels": [16, 32], "attention_levels": [False, False], "latent_channels": 2},
        (32, 32, 32),
        (16, 16, 16),
    ),
}


def _rss_mib() -> float:
    """The peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(method: str, size: tuple[int, int, int], device: str, batch: int) -> dict:
    """Build the method, make the measurement, reconstruct once; return the measurements."""
    import torch

    sys.path.insert(0, str(ROOT))
    from medrecon.checkpoint import ModelSpec
    from medrecon.data.context import stack_neighbours
    from medrecon.diffusion import build_sampler
    from medrecon.diffusion.guidance import GuidanceConfig
    from medrecon.latent.codec import LatentCodec
    from medrecon.nn.registry import build_autoencoder
    from medrecon.physics.registry import build_task
    from medrecon.recon.methods import DiffusionMethod, LatentMethod

    torch.manual_seed(0)
    dev = torch.device(device)
    sampler, guidance = build_sampler("mmse", steps=5), GuidanceConfig("dc")
    volume = torch.rand(1, 1, *size, device=dev) * 2 - 1
    if method == "slices25d":
        task = build_task("thick_slices", spatial_dims=2)
        spec = ModelSpec(UNET_TINY, dict(task_config(task)), 2, 1, 3, context=1)
        precond = spec.build_precond().to(dev).eval().requires_grad_(False)
        run = DiffusionMethod(precond, task, sampler, guidance)
        units = volume[0, 0].permute(1, 0, 2)[:, None]  # coronal slices (J, 1, I, K): K is the thick axis
        meas = task.degrade(units)
        cond = stack_neighbours(task.condition(meas), 1)

        def reconstruct() -> None:
            for start in range(0, units.shape[0], batch):
                rows = list(range(start, min(start + batch, units.shape[0])))
                run(meas.index(rows), cond[rows], rows)

    else:
        task = build_task("thick_slices", spatial_dims=3)
        meas = task.degrade(volume)
        if method == "pixel3d":
            spec = ModelSpec(UNET_TINY, dict(task_config(task)), 3, 1, 1)
            precond = spec.build_precond().to(dev).eval().requires_grad_(False)
            run = DiffusionMethod(precond, task, sampler, guidance)
        else:
            from omegaconf import OmegaConf

            from medrecon.nn.registry import autoencoder_factor

            changes, patch, ae_patch = LATENT[method]
            ae_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "autoencoder_kl.yaml"))
            ae_cfg = {**ae_cfg, **changes}
            autoencoder = build_autoencoder(ae_cfg, spatial_dims=3, channels=1).to(dev)
            factor = autoencoder_factor(ae_cfg)
            window = tuple(p // factor for p in ae_patch)
            codec = LatentCodec(autoencoder, factor, 1.0, "encode", tile=window)
            lat = codec.latent_channels
            spec = ModelSpec(UNET_TINY, dict(task_config(task)), 3, lat, lat)
            precond = spec.build_precond().to(dev).eval().requires_grad_(False)
            tile = codec.latent_size(patch)
            run = LatentMethod(precond, codec, task, sampler, guidance, tile=tile)

        def reconstruct() -> None:
            run(meas, None, [0])

    before = _current_rss_mib()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    reconstruct()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {
        "method": method,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "parameters": sum(p.numel() for p in precond.parameters()),
    }
    if dev.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if method.startswith("latent3d"):
        out["parameters_autoencoder"] = sum(p.numel() for p in codec.autoencoder.parameters())
    return out


def task_config(task) -> dict:
    """The config of a built task (``conf/task/<name>.yaml`` with its ``spatial_dims``), as a spec stores it."""
    from medrecon.physics.registry import task_config as config_of

    return {**config_of(task.name), "spatial_dims": task.spatial_dims}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[128, 128, 96], help="I J K voxels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--batch", type=int, default=16, help="2.5D slices per network call")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(args.size)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child, size, args.device, args.batch)))
        return
    results = []
    for method in args.methods:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            method,
            "--size",
            *map(str, size),
            "--device",
            args.device,
        ]
        cmd += ["--threads", str(args.threads), "--batch", str(args.batch)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            results.append({"method": method, "error": tail[:300]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    summary = {
        "size": list(size),
        "device": args.device,
        "threads": args.threads,
        "torch": __import__("torch").__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'method':<10} {'seconds':>9} {'peak RSS MiB':>13} {'RSS before':>11}")
    for r in results:
        if "error" in r:
            print(f"{r['method']:<10} failed: {r['error']}")
        else:
            print(
                f"{r['method']:<10} {r['seconds']:>9.1f} {r['peak_rss_mib']:>13.0f} {r['rss_before_mib']:>11.0f}"
            )


if __name__ == "__main__":
    main()
