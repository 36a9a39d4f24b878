"""Benchmark (not a test): training throughput in images (slices) per second.

Two numbers for medrecon, one for MONAI:

1. ``pipeline``: the real ``medrecon train`` command (``medrecon.cli.main``) on a synthetic MR volume
   written to a temporary folder -- sampler, dataset (crop, flips), task degradation (sr4x), EDM loss,
   backward, gradient clipping, AdamW, EMA. The rate is the per-step ``train/img_per_s`` TensorBoard
   scalar, median over the steps after ``--warmup`` (validation off; the final checkpoint is written after
   the last timed step).
2. ``network``: one training step of ``EDMPrecond(UNet)`` alone (EDM loss + backward + AdamW) on random
   tensors.
3. ``monai``: the same step for MONAI's ``DiffusionModelUNet`` with the same levels, residual blocks and
   attention levels, channels scaled to a similar parameter count (``build_monai`` of
   ``scripts/bench_sampling.py``), with a DDPM epsilon-prediction MSE loss, concat conditioning and AdamW.
   MONAI's attention needs ``einops`` (a MONAI optional dependency); without it this row is skipped.

Every timed number is the median over ``--steps`` steps after warm-up; both networks get the same batch, size,
threads and device (fp32 on CPU; bf16 autocast and channels_last on CUDA), and their steps are run in turns so
that load from other processes affects both alike. Network steps are also reported per CPU-second of this
process (``*_img_per_cpu_s``), which a shared machine disturbs less than wall-clock time.

    python scripts/bench_training.py --size 64 --batch 8 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from medrecon.diffusion.loss import EDMLoss  # noqa: E402
from medrecon.diffusion.precond import EDMPrecond  # noqa: E402
from medrecon.nn import UNet, count_parameters  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="square patch size (default 64)")
    p.add_argument("--batch", type=int, default=8, help="slices per step (default 8)")
    p.add_argument("--model", default="unet_tiny", help="conf/model name (default unet_tiny)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    p.add_argument("--skip-pipeline", action="store_true", help="only the network-level steps")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.size % 8 or args.size < 8 or args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--size must be a positive multiple of 8; --batch, --steps >= 1; --warmup >= 0")
    return args


def synthetic_manifest(folder: Path, size: int) -> Path:
    """One MR-like volume of ``(1.5 size, 1.5 size, 24)`` voxels and its manifest."""
    from medrecon.io.nifti import write_nifti
    from medrecon.manifest import ManifestRecord, write_manifest
    from medrecon.volume import Volume

    shape = (size * 3 // 2, size * 3 // 2, 24)
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    vol = np.where((i / 0.8) ** 2 + (j / 0.7) ** 2 < 1, 100.0, 0.0) * (1 + 0.2 * k)
    vol = np.clip(vol + rng.normal(0, 2, shape), 0, None).astype(np.float32)
    path = folder / "vol.nii.gz"
    write_nifti(Volume(vol, np.eye(4)), path)
    record = ManifestRecord("s-00000000000000aa", "nifti", [path], "MR", shape, (1.0,) * 3, "train", "ok")
    return write_manifest(folder / "manifest.jsonl", [record])


def pipeline_rate(args: argparse.Namespace, device: str) -> float:
    """Median ``train/img_per_s`` of ``medrecon train`` over the steps after warm-up."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medrecon.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthetic_manifest(Path(tmp), args.size)
        out = Path(tmp) / "run"
        code = main(
            [
                "train",
                f"manifest={manifest}",
                f"out={out}",
                "task=sr4x",
                f"model={args.model}",
                f"device={device}",
                f"data.patch_size={args.size}",
                f"train.batch_size={args.batch}",
                f"train.steps={args.warmup + args.steps}",
                "train.val_every=0",
                "train.ckpt_every=0",
                "train.log_every=1",
                "progress=false",
            ]
        )
        if code != 0:
            raise SystemExit(f"medrecon train failed with exit code {code}")
        acc = EventAccumulator(str(out / "tb"))
        acc.Reload()
        rates = [e.value for e in acc.Scalars("train/img_per_s")][args.warmup :]
    return statistics.median(rates)


def timed(step, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one ``step()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - w0, time.process_time() - c0


def interleaved_rates(steps: dict, batch: int, device: torch.device, warmup: int, n: int) -> dict:
    """Images/s (median wall clock) and images per CPU-second (median) of each named ``step()``.

    The steps are run in turns (A, B, A, B, ...) so that load from other processes on a shared machine
    affects all of them alike; CPU seconds are less sensitive to such load than wall-clock seconds.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    out = {}
    for name, values in times.items():
        out[f"{name}_img_per_s"] = batch / statistics.median(w for w, _ in values)
        out[f"{name}_img_per_cpu_s"] = batch / statistics.median(c for _, c in values)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = device.type == "cuda"
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    fmt = torch.channels_last if cuda else torch.contiguous_format
    from bench_sampling import build_monai, model_kwargs

    torch.manual_seed(0)
    b, s = args.batch, args.size
    kw = model_kwargs(args.model)
    net = UNet(2, 2, 1, **kw)
    precond = EDMPrecond(net, image_channels=1, cond_channels=1).to(device, memory_format=fmt).train()
    x0 = (torch.randn(b, 1, s, s, device=device) * 0.5).contiguous(memory_format=fmt)
    cond = (torch.randn(b, 1, s, s, device=device) * 0.5).contiguous(memory_format=fmt)
    loss_fn = EDMLoss()
    opt = torch.optim.AdamW(precond.parameters(), lr=1e-4)

    def ours() -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = loss_fn(precond, x0, cond).mean()
        loss.backward()
        opt.step()

    results: dict = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "size": s,
        "batch": b,
        "model": args.model,
        "params_medrecon": count_parameters(net),
    }
    steps = {"network": ours}
    try:
        monai_net, channels, _ = build_monai(kw, count_parameters(net))
    except ImportError as err:  # MONAI's attention blocks need einops
        results["monai"] = f"skipped: {str(err).splitlines()[0]}"
    else:
        from monai.networks.schedulers import DDPMScheduler

        monai_net = monai_net.to(device, memory_format=fmt).train()
        ddpm = DDPMScheduler(num_train_timesteps=1000)
        opt_m = torch.optim.AdamW(monai_net.parameters(), lr=1e-4)

        def theirs() -> None:
            opt_m.zero_grad(set_to_none=True)
            eps = torch.randn_like(x0)
            t = torch.randint(0, 1000, (b,), device=device)
            noisy = ddpm.add_noise(original_samples=x0, noise=eps, timesteps=t)
            with amp():
                pred = monai_net(torch.cat([noisy, cond], 1), timesteps=t)
            F.mse_loss(pred.float(), eps).backward()
            opt_m.step()

        results["params_monai"] = count_parameters(monai_net)
        results["monai_channels"] = channels
        steps["monai"] = theirs
    results.update(interleaved_rates(steps, b, device, args.warmup, args.steps))
    if not args.skip_pipeline:
        results["pipeline_img_per_s"] = pipeline_rate(args, str(device))
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
