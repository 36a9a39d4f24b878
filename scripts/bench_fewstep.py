"""Benchmark (not a test): seconds per slice and PSNR/SSIM of medrecon's samplers on held-out slices, in turns,
beside MONAI's DDIM-50 reference pipeline with an equal-size network.

One run measures, on the same held-out slices of the same trained checkpoint (default: the bundled sr4x demo
model on the held-out slab of the sample scan, as ``medrecon evaluate`` selects it):

- ``dpmpp x20``: DPM-Solver++(2M), 20 steps, one sample (the documented default before ``mmse``);
- ``dpmpp x10, mean of 4``: the demo setting before ``mmse`` (40 network evaluations per slice);
- ``mmse x1``, ``mmse x2`` and ``mmse x5``: the conditional model's one-evaluation estimate of E[x|y], the same
  plus one deterministic refinement step from ``sigma_refine=0.05``, and plus four from 0.2
  (conf/sampler/mmse.yaml, the default);
- MONAI: ``DiffusionModelUNet`` built as ``model=monai_unet`` builds it (medrecon's registry and adapter,
  ``medrecon.nn.monai_unet``) with the checkpoint network's levels, blocks and attention, channels scaled to the
  same parameter count, the checkpoint's image and condition channels; MONAI's own pipeline drives the plain
  MONAI network: concat conditioning, ``DDIMScheduler`` 50 steps, on the same slice size and batch;
- ours on the MONAI network (column ``ours/MONAI net``): each of our settings above, run by the same code path
  with that same MONAI network (``EDMPrecond`` around the adapter), timed in turns with MONAI's pipeline: the
  like-with-like comparison of the two pipelines on one network (``--skip-monai-net`` leaves it out).
  The MONAI network is untrained (MONAI ships no model for this task), so both MONAI columns are throughput
  only; a trained ``model=monai_unet`` checkpoint is benchmarked as ``--checkpoint``, like any other.

All of ours use data-consistency guidance. Timing runs the methods in turns (best of ``--repeats``), so each sees
the same machine load; quality is scored with ``medrecon.evaluate.metrics.volume_metrics`` (fastMRI convention)
on the decoded volumes, per volume, then averaged.

    python scripts/bench_fewstep.py                                    # bundled sr4x demo model, CPU
    python scripts/bench_fewstep.py --task mri_r4 --threads 2 --json out.json
    python scripts/bench_fewstep.py --checkpoint runs/x/best.safetensors --manifest m.jsonl --root DIR

MONAI's attention blocks need ``einops`` (a medrecon dependency since ``model=monai_unet``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.diffusion import build_sampler  # noqa: E402
from medrecon.diffusion.guidance import GuidanceConfig  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_sampling import best_times, build_monai  # noqa: E402


@dataclass
class Setting:
    """One of our reconstruction settings: sampler, K samples, network evaluations per slice."""

    name: str
    sampler: object
    samples: int

    @property
    def nfe(self) -> int:
        return int(self.sampler.steps) * self.samples


SETTINGS = (
    Setting("dpmpp x20", build_sampler("dpmpp", 20), 1),
    Setting("dpmpp x10, mean of 4", build_sampler("dpmpp", 10), 4),
    Setting("mmse x1", build_sampler("mmse", 1, sigma_max=10.0), 1),
    Setting("mmse x2", build_sampler("mmse", 2, sigma_max=10.0, sigma_refine=0.05, rho=2.0), 1),
    Setting("mmse x5", build_sampler("mmse", 5, sigma_max=10.0, sigma_refine=0.2, rho=2.0), 1),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--task", default="sr4x", choices=("sr4x", "mri_r4"), help="bundled demo model (default sr4x)"
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="a checkpoint instead of the bundled demo model"
    )
    p.add_argument(
        "--manifest", type=Path, default=None, help="manifest (default: the sample scan, materialised)"
    )
    p.add_argument("--root", type=Path, default=None, help="folder the manifest's relative paths start from")
    p.add_argument("--split", default="test", help="held-out split / slab (default test)")
    p.add_argument("--batch", type=int, default=16, help="slices per batch (default 16)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method, best kept (default 2)")
    p.add_argument("--monai-steps", type=int, default=50, help="MONAI DDIM steps (default 50)")
    p.add_argument(
        "--skip-monai-net",
        action="store_true",
        help="leave out our settings on the MONAI network (the 'ours/MONAI net' column)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def held_out(args: argparse.Namespace, loaded, tmp: Path) -> list[tuple[object, torch.Tensor | None]]:
    """The evaluated items (``medrecon.evaluate.run.prepare_item``) of the held-out selection."""
    from medrecon.evaluate.run import prepare_item
    from medrecon.evaluate.selection import select_records, slice_rule
    from medrecon.manifest import read_manifest
    from medrecon.recon.setup import checkpoint_axis
    from medrecon.recon.slicing import Layout

    manifest, root = args.manifest, args.root
    if manifest is None:
        from medrecon.sample import materialise_demo_archive

        root = materialise_demo_archive(tmp / "sample", 2.0).root
        manifest = ROOT / "data_manifests" / "demo.jsonl"
    records = [r for r in read_manifest(manifest, root=root) if r.ok]
    if args.manifest is None:
        records = [r for r in records if r.format == "nifti"]  # the DICOM series is the same volume
    rule = slice_rule(OmegaConf.create({"split": args.split, "slices": None, "slice_split": "auto"}), loaded)
    layout = Layout(spatial_dims=loaded.spatial_dims, axis=checkpoint_axis(loaded, None))
    items = []
    for i, record in enumerate(select_records(records, rule)):
        items.append(prepare_item(record, i, rule, layout, loaded.task, loaded.encoder, loaded.context, 0))
    if not items:
        raise SystemExit("no held-out slices in the selection")
    return items


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from medrecon.checkpoint import load_checkpoint
    from medrecon.demo import demo_checkpoint
    from medrecon.evaluate.metrics import volume_metrics
    from medrecon.recon.measure import unit_seeds
    from medrecon.recon.methods import DiffusionMethod

    device = torch.device("cpu")
    path = args.checkpoint or demo_checkpoint(args.task)
    loaded = load_checkpoint(str(path), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        items = held_out(args, loaded, Path(tmp))
    guidance = GuidanceConfig(name="dc")
    methods = {
        s.name: DiffusionMethod(loaded.precond, loaded.task, s.sampler, guidance, samples=s.samples)
        for s in SETTINGS
    }

    def batches(item, cond):
        n = int(item.meas.y.shape[0])
        seeds = unit_seeds(item.id, n, 0)
        for lo in range(0, n, args.batch):
            rows = list(range(lo, min(n, lo + args.batch)))
            yield item.meas.index(rows), (None if cond is None else cond[rows]), seeds[lo : rows[-1] + 1]

    def reconstruct(name: str) -> list[np.ndarray]:
        out = []
        for item, cond in items:
            means = [methods[name](m, c, s)[0] for m, c, s in batches(item, cond)]
            mean = torch.cat(means)[:, 0].numpy()
            out.append(item.to_volume(item.encoder.decode(mean)))
        return out

    slices = sum(int(item.meas.y.shape[0]) for item, _ in items)
    results: dict[str, dict] = {}
    volumes: dict[str, list[np.ndarray]] = {}
    for s in SETTINGS:  # warm-up and quality (deterministic per seed: timing runs give the same volumes)
        volumes[s.name] = reconstruct(s.name)
        scores = [
            volume_metrics(item.gt, vol, slice_axis=item.slice_axis, valid=item.valid).as_dict()
            for (item, _), vol in zip(items, volumes[s.name])
        ]
        results[s.name] = {
            "nfe_per_slice": s.nfe,
            "psnr": float(np.mean([m["psnr"] for m in scores])),
            "ssim": float(np.mean([m["ssim"] for m in scores])),
        }

    # MONAI's reference pipeline: equal-size network on the same slice shape and batch (throughput only)
    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler

    from medrecon.diffusion import EDMPrecond
    from medrecon.nn import count_parameters

    spec = loaded.spec
    kw = {k: v for k, v in spec.model.items() if not k.startswith("_")}
    adapter, monai_cfg = build_monai(  # model=monai_unet's builder (medrecon.nn.registry)
        kw,
        count_parameters(loaded.precond.net),
        in_channels=spec.image_channels + spec.cond_channels,
        out_channels=spec.image_channels,
    )
    adapter = adapter.to(device).eval()
    monai_net = adapter.unet  # MONAI's pipeline drives the plain MONAI network inside the adapter
    first, cond0 = items[0]
    shape = tuple(loaded.task.condition(first.meas.index([0])).shape[2:])
    b = min(args.batch, slices)
    noise = torch.randn(b, spec.image_channels, *shape)
    cond_m = torch.randn(b, spec.cond_channels, *shape)
    ddim = DDIMScheduler(num_train_timesteps=1000)
    ddim.set_timesteps(args.monai_steps)
    inferer = DiffusionInferer(ddim)

    def monai_all() -> None:  # the same number of slices as ours, in batches of b
        with torch.no_grad():
            for _ in range(0, slices, b):
                inferer.sample(
                    input_noise=noise * 1.0,
                    diffusion_model=monai_net,
                    scheduler=ddim,
                    conditioning=cond_m,
                    mode="concat",
                    verbose=False,
                )

    for s in SETTINGS:  # in turns with MONAI: each pair sees the same machine load
        ours, theirs = best_times(lambda n=s.name: reconstruct(n), monai_all, device, args.repeats, s.name)
        results[s.name]["slices_per_s"] = slices / ours
        results[s.name]["monai_slices_per_s"] = slices / theirs
        results[s.name]["ratio_vs_monai"] = theirs / ours

    if not args.skip_monai_net:  # our settings on the MONAI network, in turns with MONAI's pipeline on it
        monai_precond = EDMPrecond(
            adapter, spec.image_channels, spec.cond_channels, sigma_data=spec.sigma_data
        ).eval()
        for s in SETTINGS:
            methods[s.name] = DiffusionMethod(
                monai_precond, loaded.task, s.sampler, guidance, samples=s.samples
            )
            reconstruct(s.name)  # warm-up
            ours, theirs = best_times(
                lambda n=s.name: reconstruct(n), monai_all, device, args.repeats, s.name + "_mnet"
            )
            results[s.name]["monai_net_slices_per_s"] = slices / ours
            results[s.name]["monai_net_ratio_vs_monai"] = theirs / ours
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "device": f"cpu ({platform.processor() or 'unknown'}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "command": "python scripts/bench_fewstep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": Path(path).name,
        "task": loaded.task.name,
        "held_out_slices": slices,
        "slice_shape": list(shape),
        "params": count_parameters(loaded.precond.net),
        "monai_params": count_parameters(monai_net),
        "monai_channels": monai_cfg["channels"],
        "monai_config": {k: v for k, v in monai_cfg.items() if k != "_target_"},
        "monai": f"DDIM x {args.monai_steps} (untrained: throughput only)",
        "methods": results,
    }
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


def report(r: dict) -> None:
    print(f"{r['date']}  {r['device']}  torch {r['torch']}")
    print(
        f"{r['checkpoint']} ({r['task']}, {r['params'] / 1e6:.2f}M parameters), {r['held_out_slices']} held-out "
        f"slices of {r['slice_shape']}; MONAI {r['monai']}, {r['monai_params'] / 1e6:.2f}M parameters"
    )
    print(
        f"{'method':<24}{'NFE/slice':>10}{'slices/s':>10}{'MONAI/s':>10}{'x MONAI':>9}{'PSNR':>8}{'SSIM':>8}"
        f"{'ours/MONAI net':>16}{'x MONAI':>9}"
    )
    for name, m in r["methods"].items():
        same_net = (
            f"{m['monai_net_slices_per_s']:>16.3f}{m['monai_net_ratio_vs_monai']:>8.1f}x"
            if "monai_net_slices_per_s" in m
            else ""
        )
        print(
            f"{name:<24}{m['nfe_per_slice']:>10}{m['slices_per_s']:>10.3f}{m['monai_slices_per_s']:>10.3f}"
            f"{m['ratio_vs_monai']:>8.1f}x{m['psnr']:>8.2f}{m['ssim']:>8.4f}{same_net}"
        )


if __name__ == "__main__":
    main()
