"""Benchmark (not a test): medrecon's training step and sampling beside MONAI's reference pipeline.

medrecon: ``medrecon.nn.UNet`` (a ``conf/model`` size) in ``EDMPrecond``, ``EDMLoss`` for training, and
DPM-Solver++(2M) at its default step count for sampling (``--sampler mmse --steps 2``: the few-step
reconstruction default). MONAI: ``DiffusionModelUNet`` built the way ``model=monai_unet`` builds it (``conf/model/monai_unet.yaml`` through medrecon's closed registry and adapter,
``medrecon.nn.monai_unet``) with the same levels, residual blocks and attention levels, channels scaled to a
similar parameter count; MONAI's own pipeline drives the plain MONAI network inside the adapter: concat
conditioning through ``DiffusionInferer(mode="concat")``, a 1000-step DDPM training objective and
``DDIMScheduler`` with 50 inference steps. A third row samples that same MONAI network with medrecon's sampler
(EDM preconditioning, DPM-Solver++), as ``model=monai_unet`` does: the sampler's gain and the network's speed
separately. All get the same input size, batch, device, bf16 autocast and channels_last (CUDA only).

Reported: parameter counts; seconds per training step (forward + backward + AdamW) and per network forward;
slices/s for sampling and the ratio medrecon / MONAI; achieved TFLOP/s (FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` on one forward, or one forward + backward for training).

    python scripts/bench_sampling.py --size 256 --batch 8 --device cuda
    python scripts/bench_sampling.py --size 64 --batch 2 --device cpu --threads 2

MONAI's attention blocks need ``einops`` (a medrecon dependency since ``model=monai_unet``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrecon.diffusion import EDMLoss, EDMPrecond, build_sampler, conditional_denoiser  # noqa: E402
from medrecon.nn import UNet, count_parameters  # noqa: E402

MODELS = ("unet_tiny", "unet_small", "unet_base")


def sampler_from_conf(name: str, steps: int | None):
    """``build_sampler`` with the options of ``conf/sampler/<name>.yaml`` (what reconstruct runs), ``steps``
    replacing the file's when given."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "sampler" / f"{name}.yaml"))
    options.pop("_target_", None)
    options.pop("name", None)
    if steps is not None:
        options["steps"] = steps
    return build_sampler(name, **options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="square slice size in pixels (default 256)")
    p.add_argument("--batch", type=int, default=4, help="slices per batch (default 4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--model", default="unet_small", choices=MODELS, help="medrecon model size (conf/model)")
    p.add_argument(
        "--sampler",
        choices=("dpmpp", "ddim", "mmse"),
        default="dpmpp",
        help="medrecon sampler, with the settings of conf/sampler/<name>.yaml (default dpmpp; mmse is the "
        "reconstruct default: E[x|y] in one evaluation plus steps-1 refinement steps)",
    )
    p.add_argument("--steps", type=int, default=None, help="medrecon sampler steps (default: the sampler's)")
    p.add_argument("--monai-steps", type=int, default=50, help="MONAI DDIM inference steps (default 50)")
    p.add_argument(
        "--train-steps", type=int, default=3, help="timed training steps per model, best kept (default 3)"
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="timed sampling runs per model, best kept (default 2)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--compile",
        choices=("none", "medrecon", "both"),
        default="none",
        help="torch.compile medrecon's network (as `reconstruct compile=true` does), or both networks "
        "(default none: eager, MONAI's reference pipeline as it ships)",
    )
    p.add_argument("--skip-train", action="store_true", help="time sampling only (no training steps)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for name in ("size", "batch", "monai_steps", "train_steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def model_kwargs(name: str) -> dict:
    """The options of ``conf/model/<name>.yaml`` (without ``_target_``)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
    cfg.pop("_target_")
    return cfg


def monai_config(kw: dict, channels: list[int]) -> dict:
    """``conf/model/monai_unet.yaml`` with our network's blocks and attention levels (``kw``: a
    ``medrecon.nn.UNet`` config) at ``channels``; about ``num_heads`` heads per attended level (one
    ``num_head_channels`` for all: the largest divisor of the attended channels that gives at least that many)."""
    heads = int(kw.get("num_heads", 4))
    attention = [bool(a) for a in kw["attention_levels"]]
    attended = [c for c, a in zip(channels, attention) if a] + [channels[-1]]  # MONAI's middle block attends
    common = math.gcd(*attended)
    widest = max(1, min(attended) // heads)  # head width that gives every attended level >= heads heads
    head_channels = max(d for d in range(1, common + 1) if common % d == 0 and d <= widest)
    return {
        **model_kwargs("monai_unet"),
        "_target_": "medrecon.nn.monai_unet.MonaiUNet",
        "channels": channels,
        "num_res_blocks": int(kw.get("num_res_blocks", 1)),
        "attention_levels": attention,
        "num_head_channels": head_channels,
    }


def build_monai(kw: dict, target_params: int, in_channels: int = 2, out_channels: int = 1):
    """``model=monai_unet``'s network (``medrecon.nn.registry.build_network``: the adapter around MONAI's
    ``DiffusionModelUNet``) with our network's levels, blocks and attention, channels (multiples of 32, its
    GroupNorm groups) scaled so that the parameter count is closest to ``target_params``.

    Returns:
        ``(adapter, config)``: ``adapter.unet`` is the plain MONAI network that MONAI's pipeline drives, the
        adapter itself what medrecon's sampler drives; ``config`` is the ``model`` config it was built from.
    """
    from medrecon.nn.registry import build_network

    def make(cfg: dict):
        return build_network(cfg, spatial_dims=2, in_channels=in_channels, out_channels=out_channels)

    best = None
    for f in [0.5 + 0.0625 * i for i in range(17)]:  # 0.5 .. 1.5
        cfg = monai_config(kw, [max(32, round(c * f / 32) * 32) for c in kw["channels"]])
        with torch.device("meta"):  # counting only: no memory, no random numbers
            n = count_parameters(make(cfg))
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (cfg, n)
    return make(best[0]), best[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_SECONDS: dict[str, float] = {}


def best_times(
    a: Callable[[], object], b: Callable[[], object], device: torch.device, repeats: int, key: str = ""
) -> tuple[float, float]:
    """Best-of-``repeats`` wall seconds of ``a`` and ``b``, run alternately so that both see the same machine
    load (on a shared CPU the load changes from minute to minute). The best process CPU seconds (all threads)
    are kept in ``CPU_SECONDS[key + "_a" / "_b"]``: less sensitive to other processes on a shared CPU."""
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, w, c in ((a, wall[0], cpu[0]), (b, wall[1], cpu[1])):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            w.append(time.perf_counter() - t0)
            c.append(time.process_time() - c0)
    CPU_SECONDS[key + "_a"], CPU_SECONDS[key + "_b"] = min(cpu[0]), min(cpu[1])
    return min(wall[0]), min(wall[1])


def flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    fmt = torch.channels_last if cuda else torch.contiguous_format
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from monai.inferers import DiffusionInferer
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    torch.manual_seed(0)
    b, s = args.batch, args.size
    kw = model_kwargs(args.model)
    net = UNet(2, 2, 1, **kw)
    precond = EDMPrecond(net, image_channels=1, cond_channels=1).to(device, memory_format=fmt)
    monai_adapter, monai_cfg = build_monai(kw, count_parameters(net))  # model=monai_unet's builder
    monai_adapter = monai_adapter.to(device, memory_format=fmt)
    monai_net = monai_adapter.unet  # MONAI's pipeline drives the plain MONAI network inside the adapter
    monai_precond = EDMPrecond(monai_adapter, image_channels=1, cond_channels=1)  # what medrecon samples
    p_ours, p_monai = count_parameters(net), count_parameters(monai_net)

    x0 = torch.randn(b, 1, s, s, device=device).contiguous(memory_format=fmt) * 0.5
    cond = torch.randn(b, 1, s, s, device=device).contiguous(memory_format=fmt) * 0.5
    noise = torch.randn(b, 1, s, s, device=device).contiguous(memory_format=fmt)
    x_in = torch.cat([x0, cond], 1).contiguous(memory_format=fmt)
    c_noise = torch.zeros(b, device=device)
    t_monai = torch.full((b,), 500, device=device, dtype=torch.long)

    # --- training step: forward + backward + AdamW ------------------------------------------------------
    loss_fn = EDMLoss()
    opt = torch.optim.AdamW(precond.parameters(), lr=1e-4)
    ddpm = DDPMScheduler(num_train_timesteps=1000)
    train_inferer = DiffusionInferer(ddpm)
    opt_m = torch.optim.AdamW(monai_net.parameters(), lr=1e-4)

    def ours_fwd_bwd() -> None:
        with amp:
            loss = loss_fn(precond, x0, cond).mean()
        loss.backward()

    def ours_train() -> None:
        opt.zero_grad(set_to_none=True)
        ours_fwd_bwd()
        opt.step()

    def monai_fwd_bwd() -> None:
        eps = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,), device=device)
        with amp:
            pred = train_inferer(x0, monai_net, eps, t, condition=cond, mode="concat")
        F.mse_loss(pred.float(), eps).backward()

    def monai_train() -> None:
        opt_m.zero_grad(set_to_none=True)
        monai_fwd_bwd()
        opt_m.step()

    precond.train()
    monai_net.train()
    # FLOPs are counted on the eager networks, before any compilation
    f_train_ours, f_train_monai = flops(ours_fwd_bwd), flops(monai_fwd_bwd)
    with torch.no_grad(), amp:
        f_fwd_ours = flops(lambda: net(x_in, c_noise))
        f_fwd_monai = flops(lambda: monai_net(x_in, timesteps=t_monai))
    compile_s: dict[str, float] = {}
    if args.compile != "none":
        net.compile()  # what `medrecon reconstruct compile=true` does
        if args.compile == "both":
            monai_net.compile()
    if args.skip_train:
        t_train_ours = t_train_monai = float("nan")
    else:
        ours_train()  # warm-up (allocator, cudnn autotune, compilation)
        monai_train()
        t_train_ours, t_train_monai = best_times(ours_train, monai_train, device, args.train_steps, "train")

    # --- sampling -------------------------------------------------------------------------------------------
    precond.eval()
    monai_net.eval()
    sampler = sampler_from_conf(args.sampler, args.steps)
    nfe_ours, nfe_monai = int(sampler.steps), args.monai_steps
    ddim = DDIMScheduler(num_train_timesteps=1000)
    ddim.set_timesteps(nfe_monai)
    inferer = DiffusionInferer(ddim)

    def ours_forward() -> None:
        with torch.no_grad(), amp:
            net(x_in, c_noise)

    def monai_forward() -> None:
        with torch.no_grad(), amp:
            monai_net(x_in, timesteps=t_monai)

    def ours_sample() -> None:
        with amp:
            sampler.run(conditional_denoiser(precond, cond), noise)

    def monai_sample() -> None:
        with torch.no_grad(), amp:
            inferer.sample(
                input_noise=noise * 1.0,
                diffusion_model=monai_net,
                scheduler=ddim,
                conditioning=cond,
                mode="concat",
                verbose=False,
            )

    for name, fn in (("medrecon", ours_forward), ("monai", monai_forward)):
        sync(device)
        t0 = time.perf_counter()
        fn()  # warm-up; with --compile this is where the inference graph compiles
        sync(device)
        compile_s[name] = time.perf_counter() - t0
    t_fwd_ours, t_fwd_monai = best_times(ours_forward, monai_forward, device, 5, "forward")
    if args.compile != "none":  # a compiled network may specialise again on the sampler's inputs: warm up
        ours_sample()
        monai_sample()
    t_sample_ours, t_sample_monai = best_times(ours_sample, monai_sample, device, args.repeats, "sample")

    # medrecon's sampler on the same MONAI network (model=monai_unet), in turns with MONAI's pipeline again
    def ours_on_monai_sample() -> None:
        with amp:
            sampler.run(conditional_denoiser(monai_precond, cond), noise)

    monai_precond.eval()
    ours_on_monai_sample()  # warm-up
    t_sample_mnet, _ = best_times(ours_on_monai_sample, monai_sample, device, args.repeats, "sample_mnet")

    res = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "device": torch.cuda.get_device_name(device)
        if cuda
        else f"cpu ({platform.processor() or 'unknown'}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "command": "python scripts/bench_sampling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "size": s,
        "batch": b,
        "bf16_autocast": cuda,
        "channels_last": cuda,
        "compile": args.compile,
        "first_forward_s": compile_s,
        "medrecon": {
            "model": args.model,
            "params": p_ours,
            "sampler": f"{args.sampler} x {nfe_ours}",
            "nfe": nfe_ours,
            "train_step_s": t_train_ours,
            "train_tflops": f_train_ours / t_train_ours / 1e12,
            "forward_s": t_fwd_ours,
            "forward_gflop": f_fwd_ours / 1e9,
            "sample_s": t_sample_ours,
            "slices_per_s": b / t_sample_ours,
            "sample_tflops": f_fwd_ours * nfe_ours / t_sample_ours / 1e12,
        },
        "monai": {
            "model": "monai_unet",
            "config": {k: v for k, v in monai_cfg.items() if k != "_target_"},
            "channels": monai_cfg["channels"],
            "params": p_monai,
            "sampler": f"DDIM x {nfe_monai}",
            "nfe": nfe_monai,
            "train_step_s": t_train_monai,
            "train_tflops": f_train_monai / t_train_monai / 1e12,
            "forward_s": t_fwd_monai,
            "forward_gflop": f_fwd_monai / 1e9,
            "sample_s": t_sample_monai,
            "slices_per_s": b / t_sample_monai,
            "sample_tflops": f_fwd_monai * nfe_monai / t_sample_monai / 1e12,
        },
    }
    res["medrecon_on_monai_net"] = {
        "sampler": f"{args.sampler} x {nfe_ours}",
        "nfe": nfe_ours,
        "sample_s": t_sample_mnet,
        "slices_per_s": b / t_sample_mnet,
        "sample_tflops": f_fwd_monai * nfe_ours / t_sample_mnet / 1e12,
    }
    res["sampling_ratio"] = res["medrecon"]["slices_per_s"] / res["monai"]["slices_per_s"]
    # the same (MONAI) network under both samplers: what the sampler alone gives
    res["sampler_ratio_same_net"] = (
        res["medrecon_on_monai_net"]["slices_per_s"] / res["monai"]["slices_per_s"]
    )
    res["train_ratio"] = t_train_monai / t_train_ours if not args.skip_train else float("nan")
    # cross-check from the per-forward times alone: (MONAI forward x its NFE) / (ours x our NFE)
    res["forward_nfe_ratio"] = (t_fwd_monai * nfe_monai) / (t_fwd_ours * nfe_ours)
    res["cpu_seconds"] = dict(CPU_SECONDS)
    if not cuda:
        res["sampling_ratio_cpu_time"] = CPU_SECONDS["sample_b"] / CPU_SECONDS["sample_a"]
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


def report(r: dict) -> None:
    o, m = r["medrecon"], r["monai"]
    print(f"{r['date']}  {r['device']}  torch {r['torch']}  {r['size']}x{r['size']}  batch {r['batch']}")
    print(
        f"bf16 autocast: {r['bf16_autocast']}  channels_last: {r['channels_last']}  compile: {r['compile']}"
        f"  (first forward after compile: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["first_forward_s"].items())
        + ")"
    )
    print(f"{'':<24}{'medrecon':>24}{'MONAI':>24}")
    rows = [
        ("model", o["model"], "ch " + ",".join(str(c) for c in m["channels"])),
        ("parameters (M)", f"{o['params'] / 1e6:.2f}", f"{m['params'] / 1e6:.2f}"),
        ("sampler", o["sampler"], m["sampler"]),
        ("train step (s)", f"{o['train_step_s']:.3f}", f"{m['train_step_s']:.3f}"),
        ("train TFLOP/s", f"{o['train_tflops']:.3f}", f"{m['train_tflops']:.3f}"),
        ("forward GFLOP (batch)", f"{o['forward_gflop']:.1f}", f"{m['forward_gflop']:.1f}"),
        ("forward (s)", f"{o['forward_s']:.3f}", f"{m['forward_s']:.3f}"),
        ("sampling (s per batch)", f"{o['sample_s']:.2f}", f"{m['sample_s']:.2f}"),
        ("sampling s per NFE", f"{o['sample_s'] / o['nfe']:.3f}", f"{m['sample_s'] / m['nfe']:.3f}"),
        ("sampling slices/s", f"{o['slices_per_s']:.4f}", f"{m['slices_per_s']:.4f}"),
        ("sampling TFLOP/s", f"{o['sample_tflops']:.3f}", f"{m['sample_tflops']:.3f}"),
    ]
    for name, a, c in rows:
        print(f"{name:<24}{a:>24}{c:>24}")
    mn = r["medrecon_on_monai_net"]
    print(
        f"medrecon's {mn['sampler']} on the MONAI network (model=monai_unet): {mn['sample_s']:.2f} s per batch, "
        f"{mn['slices_per_s']:.4f} slices/s, {r['sampler_ratio_same_net']:.2f}x MONAI's pipeline on the same network"
    )
    print(f"sampling throughput ratio medrecon/MONAI: {r['sampling_ratio']:.2f}x")
    print(f"training step speed ratio medrecon/MONAI: {r['train_ratio']:.2f}x")
    print(f"cross-check from forward times x NFE: {r['forward_nfe_ratio']:.2f}x")
    if "sampling_ratio_cpu_time" in r:
        c = r["cpu_seconds"]
        print(
            f"process CPU seconds (best, medrecon vs MONAI): sampling {c['sample_a']:.2f} vs "
            f"{c['sample_b']:.2f}, forward {c['forward_a']:.3f} vs {c['forward_b']:.3f}, train step "
            f"{c.get('train_a', float('nan')):.3f} vs {c.get('train_b', float('nan')):.3f}; sampling ratio by CPU time: "
            f"{r['sampling_ratio_cpu_time']:.2f}x"
        )


if __name__ == "__main__":
    main()
