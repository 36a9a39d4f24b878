"""Which measurement guidance works for a latent model: every variant on the same held-out slab (not a test).

For a latent checkpoint (``objective=latent``) and its manifest, the held-out slab of ``--split`` (default
``val``: choose settings there, report the test slab) of every ok record is encoded, degraded by the model's
task (seeded), and reconstructed with the default sampler (``mmse``, 5 evaluations) under each variant:

- ``none``: the latent model alone, decoded;
- ``final``: the same, the decoded image projected onto the measurement once (``task.project``): what
  ``guidance=dc`` runs for a latent model (``medrecon.latent.posterior.guidance_plan``);
- ``steps``: every x0 estimate decoded, projected and encoded back (``dc`` through ``LatentTask``), the
  decoded output not projected;
- ``steps+final``: both;
- ``dps<scale>``: DPS through the decoder (the residual's gradient reaches the latent through decoder and
  denoiser), then ``final``;
- ``ceiling``: the autoencoder alone on the ground truth (``decode(encode(x))``), and ``ceiling+final``.

Scores are ``medrecon.evaluate.metrics.volume_metrics`` in scanner units (SSIM over slices of the checkpoint's
``data.axis``, the through-plane gradient error along the volume's slice axis), and the seconds of each.

    python scripts/latent_guidance.py runs/latent_thick_slices/last.safetensors demo/manifest.jsonl
    python scripts/latent_guidance.py CKPT MANIFEST --split test --dps 0.5 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.checkpoint import load_checkpoint  # noqa: E402
from medrecon.data.regions import build_slice_split  # noqa: E402
from medrecon.data.source import read_records  # noqa: E402
from medrecon.diffusion import build_sampler  # noqa: E402
from medrecon.diffusion.guidance import GuidanceConfig  # noqa: E402
from medrecon.evaluate.metrics import volume_metrics  # noqa: E402
from medrecon.io.archive import load_item  # noqa: E402
from medrecon.latent.posterior import latent_posterior, reconstruct_autoencoder  # noqa: E402
from medrecon.recon.methods import latent_tile  # noqa: E402


def slab(array: np.ndarray, loaded, split: str, factors: tuple[int, ...]) -> np.ndarray:
    """The held-out slab of ``split`` (the checkpoint's ``data.slice_split``), each side cropped at the far
    end to a multiple of the task's factor (as evaluate does)."""
    from omegaconf import OmegaConf

    spec = OmegaConf.select(loaded.config, "data.slice_split", default=None)
    box = [slice(None)] * 3
    if spec is not None:
        rule = build_slice_split(OmegaConf.to_container(spec))
        box[rule.axis] = slice(*rule.bounds(array.shape[rule.axis])[split])
    part = array[tuple(box)]
    return part[tuple(slice(0, n // f * f) for n, f in zip(part.shape, factors))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--dps", type=float, nargs="*", default=[1.0], help="DPS scales to try")
    parser.add_argument("--steps", type=int, default=5, help="mmse sampler steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    if loaded.codec is None:
        raise SystemExit(f"{args.checkpoint} is not a latent checkpoint")
    from omegaconf import OmegaConf

    axis = OmegaConf.select(loaded.config, "data.axis", default=2)
    task, codec = loaded.task, loaded.codec  # the autoencoder in its recorded window, as reconstruct runs it
    sampler = build_sampler("mmse", steps=args.steps)
    variants: dict[
        str, tuple[str, float, bool]
    ] = {  # name -> (guidance at every step, scale, project output)
        "none": ("none", 0.0, False),
        "final": ("none", 0.0, True),
        "steps": ("dc", 0.0, False),
        "steps+final": ("dc", 0.0, True),
        **{f"dps{s:g}": ("dps", s, True) for s in args.dps},
    }
    scores: dict[str, list[dict]] = {}
    for record in read_records(args.manifest):
        if record.status != "ok":
            continue
        array = np.asarray(load_item(record).array, dtype=np.float32)
        encoder = loaded.encoder.for_volume(array)
        gt = slab(array, loaded, args.split, tuple(int(f) for f in task.scale))
        x = torch.from_numpy(encoder.encode(gt))[None, None]
        meas = task.degrade(x, torch.Generator().manual_seed(args.seed))

        def score(
            name: str, image: torch.Tensor, seconds: float, encoder=encoder, gt=gt, record=record
        ) -> None:
            out = encoder.decode(image[0, 0].numpy())
            m = volume_metrics(gt, out, slice_axis=int(axis)).as_dict()
            scores.setdefault(name, []).append({**m, "seconds": seconds})
            print(
                f"{record.id} {name:<13} PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f} "
                f"grad.err {m['slice_gradient_error']:.4f} ({seconds:.1f} s)",
                flush=True,
            )

        start = time.perf_counter()
        ceiling = reconstruct_autoencoder(codec, x)
        score("ceiling", ceiling, time.perf_counter() - start)
        score("ceiling+final", task.project(ceiling, meas), 0.0)
        for name, (guidance, scale, project) in variants.items():
            start = time.perf_counter()
            result = latent_posterior(
                loaded.precond,
                codec,
                task,
                meas,
                sampler,
                None,
                generators=[torch.Generator().manual_seed(args.seed + 1)],
                project_output=project,
                step_guidance=GuidanceConfig(guidance, scale=scale or 1.0),
                tile=latent_tile(loaded),
            )
            score(name, result.mean, time.perf_counter() - start)
    summary = {
        name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for name, rows in scores.items()
    }
    print(f"\n{'variant':<14} {'PSNR':>7} {'SSIM':>7} {'grad.err':>9} {'s':>6}")
    for name, s in summary.items():
        print(
            f"{name:<14} {s['psnr']:>7.2f} {s['ssim']:>7.4f} {s['slice_gradient_error']:>9.4f} {s['seconds']:>6.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
