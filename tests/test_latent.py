"""Latent diffusion (issue 14): MONAI's AutoencoderKL trained by the loop (stage 1), the EDM denoiser on its
latents (stage 2), guidance on decoded images, one checkpoint file, reconstruct/evaluate with it, tiling.

Tiny synthetic volumes (the training tests' 24x24x12 phantoms), a few steps, CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import test_train as tt
import torch
from safetensors import safe_open
from torch import nn

from medrecon.checkpoint import checkpoint_digest, load_checkpoint, read_metadata
from medrecon.cli import main
from medrecon.diffusion import EDMPrecond, GuidanceConfig, build_sampler, posterior_sample
from medrecon.evaluate.report import read_metrics_csv
from medrecon.info import model_card, render
from medrecon.io.nifti import read_nifti
from medrecon.latent import (
    AutoencoderLoss,
    LatentCodec,
    LatentTask,
    TiledPrecond,
    fit_scale,
    latent_posterior,
)
from medrecon.latent.codec import unshuffle
from medrecon.physics.registry import build_task
from medrecon.recon.ledger import read_records
from medrecon.recon.measure import generators
from medrecon.recon.methods import LatentMethod, latent_tile

AE = [
    "model=autoencoder_kl",
    "model.channels=[8,8]",
    "model.attention_levels=[false,false]",
    "model.norm_num_groups=8",
]


def common(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        f"manifest={manifest}",
        f"out={out}",
        "device=cpu",
        "data=patches3d",
        "data.patch_size=[16,16,8]",
        "data.val_items=1",
        "task=thick_slices",
        "task.factor=2",
        "train.batch_size=2",
        "train.warmup=1",
        "progress=false",
        "train.log_every=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tt.write_phantom_manifest(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def stages(manifest, tmp_path_factory) -> tuple[Path, Path]:
    """Stage 1 (``objective=autoencoder``) and stage 2 written as the model (``model=latent
    model.autoencoder=FILE``), two steps each; returns the two run folders."""
    root = tmp_path_factory.mktemp("stages")
    ae, lat = root / "ae", root / "lat"
    assert main(common(manifest, ae, "objective=autoencoder", *AE, "train.steps=2", "train.val_every=2")) == 0
    args = ("model=latent", f"model.autoencoder={ae / 'last.safetensors'}", "train.steps=2")
    assert main(common(manifest, lat, *args, "train.val_every=2", "val.steps=2", "sampler=mmse")) == 0
    return ae, lat


# ------------------------------------------------------------------------------------------------ stage 1
def test_stage_one_trains_monais_autoencoder_in_the_loop(stages):
    ae, _ = stages
    for name in ("last.safetensors", "best.safetensors", "ckpt_00000002.safetensors", "state_00000002.pt"):
        assert (ae / name).is_file(), name
    loaded = load_checkpoint(ae / "last.safetensors")
    assert loaded.spec.objective == "autoencoder" and loaded.spec.cond_channels == 0
    assert type(loaded.precond).__name__ == "AutoencoderKL" and loaded.spatial_dims == 3
    with safe_open(str(ae / "last.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert any(n.startswith("raw.encoder.") for n in names) and any(
        n.startswith("ema.decoder.") for n in names
    )
    score = loaded.card.validation  # held-out reconstruction: the ceiling, shown by info
    assert score is not None and math.isfinite(score.psnr) and -1 <= score.ssim <= 1
    text = render(model_card(ae / "last.safetensors"))
    assert "best held-out reconstruction PSNR" in text and "stage 1 of a latent model" in text
    assert tt.scalars(ae, "val/psnr") and tt.scalars(ae, "train/loss")


def test_an_autoencoder_checkpoint_reconstructs_nothing_by_itself(stages, manifest, tmp_path):
    ae, _ = stages
    args = [f"input={manifest}", f"out={tmp_path / 'r'}", f"checkpoint={ae / 'last.safetensors'}"]
    assert main(["reconstruct", *args, "progress=false"]) == 2
    assert not list((tmp_path / "r").glob("*.nii.gz"))


# ------------------------------------------------------------------------------------------------ stage 2
def test_stage_two_file_holds_the_autoencoder_scale_and_ceiling(stages):
    ae, lat = stages
    stage1 = load_checkpoint(ae / "last.safetensors")
    loaded = load_checkpoint(lat / "last.safetensors")
    spec = loaded.spec
    assert spec.objective == "latent" and spec.model["_target_"] == "medrecon.nn.unet.UNet"
    assert "autoencoder" not in spec.model  # model.autoencoder was a file, not a network option
    assert spec.latent["autoencoder"] == stage1.spec.model and spec.latent["condition"] == "encode"
    assert spec.image_channels == spec.cond_channels == 4  # MONAI's latent_channels (conf default)
    # the stage-1 EMA weights, stored once under ae.*; the scale gives the training latents sigma_data's std
    with safe_open(str(lat / "last.safetensors"), framework="pt") as f:
        frozen = {k[3:]: f.get_tensor(k) for k in f.keys() if k.startswith("ae.")}
    expected = stage1.precond.state_dict()
    assert frozen.keys() == expected.keys() and all(torch.equal(frozen[k], expected[k]) for k in frozen)
    assert 0 < spec.latent["scale"] < 1e3 and loaded.codec.scale == spec.latent["scale"]
    # stage 1's training patch (16x16x8) on the 2x latent grid: the autoencoder's window on larger volumes
    assert spec.latent["window"] == [8, 8, 4] and loaded.codec.tile == (8, 8, 4)
    assert loaded.card.autoencoder == stage1.card.validation
    text = render(model_card(lat / "last.safetensors"))
    assert "ceiling" in text and "AutoencoderKL" in text and "2x per axis" in text


def test_stage_two_digest_covers_the_autoencoder(stages, tmp_path):
    _, lat = stages
    from safetensors.torch import save_file

    path = lat / "last.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(k for k in tensors if k.startswith("ae.") and tensors[k].is_floating_point())[0]
    tensors[name] = tensors[name] + 1.0  # other autoencoder weights, same denoiser
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=metadata)
    assert checkpoint_digest(path) != checkpoint_digest(tmp_path / "other.safetensors")


def test_stage_two_resumes_exactly_with_its_scale(stages, manifest, tmp_path):
    ae, _ = stages
    args = ("objective=latent", f"autoencoder={ae / 'last.safetensors'}", "model=unet_tiny")
    run = ("train.steps=2", "train.ckpt_every=1", "train.val_every=0")
    assert main(common(manifest, tmp_path / "straight", *args, *run)) == 0
    assert main(common(manifest, tmp_path / "split", *args, *run, "train.stop_at=1")) == 0
    assert main(common(manifest, tmp_path / "split", *args, *run)) == 0  # resume=auto continues
    a = read_metadata(tmp_path / "straight" / "last.safetensors")
    b = read_metadata(tmp_path / "split" / "last.safetensors")
    assert a["spec"]["latent"] == b["spec"]["latent"] and b["step"] == 2
    with (
        safe_open(str(tmp_path / "straight" / "last.safetensors"), framework="pt") as f,
        safe_open(str(tmp_path / "split" / "last.safetensors"), framework="pt") as g,
    ):
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())


def test_stage_two_refusals_exit_2(stages, manifest, tmp_path):
    ae, lat = stages
    ae_file = ae / "last.safetensors"
    cases = [
        ("objective=latent", "model=unet_tiny"),  # no stage-1 checkpoint
        ("objective=latent", f"autoencoder={tmp_path / 'missing.safetensors'}"),
        ("objective=latent", f"autoencoder={lat / 'last.safetensors'}"),  # a latent model, not an autoencoder
        ("objective=latent", f"autoencoder={ae_file}", "data.encoder.low_pct=5"),  # another intensity encoder
        ("objective=latent", f"autoencoder={ae_file}", "latent.condition=nearest"),
        ("objective=regression", *AE),  # an autoencoder trains as an autoencoder
        ("objective=autoencoder", "model=unet_tiny"),
    ]
    for n, extra in enumerate(cases):
        assert main(common(manifest, tmp_path / f"r{n}", *extra, "train.steps=1")) == 2, extra


# ------------------------------------------------------------------------------------------------ use
def test_reconstruct_and_evaluate_with_a_latent_checkpoint(stages, manifest, tmp_path):
    _, lat = stages
    ckpt = lat / "last.safetensors"
    loaded = load_checkpoint(ckpt)
    tile = latent_tile(loaded)
    assert tile == (8, 8, 4)  # the 16x16x8 training patch on the 2x latent grid
    assert any(t < s for t, s in zip(tile, loaded.codec.latent_size(tt.SHAPE)))  # the volume is tiled
    out = tmp_path / "rec"
    args = [f"input={manifest}", f"out={out}", f"checkpoint={ckpt}", "progress=false", "sampler.steps=2"]
    assert main(["reconstruct", *args]) == 0
    records = read_records(out / "run.jsonl")
    assert [r.status for r in records] == ["ok", "ok"] and {r.method for r in records} == {"diffusion"}
    volume = read_nifti(out / f"{records[0].id}.nii.gz")
    assert volume.array.shape == (24, 24, 24) and np.isfinite(volume.array).all()  # thick slices x2 on K
    assert main(["reconstruct", *args]) == 0  # same settings: finished items are skipped
    assert [r.status for r in read_records(out / "run.jsonl")] == ["skipped", "skipped"]
    ev = tmp_path / "ev"
    code = main(["evaluate", f"manifest={manifest}", f"checkpoint={ckpt}", f"out={ev}", "split=val"])
    assert code == 0
    rows = read_metrics_csv(ev / "metrics.csv")
    assert {r["method"] for r in rows} == {"input", "bicubic", "tv", "diffusion"}
    assert all(math.isfinite(r["psnr"]) and math.isfinite(r["slice_gradient_error"]) for r in rows)
    report = json.loads((ev / "report.json").read_text())
    assert "slice_gradient_error" in report["methods"]["diffusion"]
    assert "slice grad. err." in (ev / "report.md").read_text()


def test_the_python_api_reconstructs_with_a_latent_model(stages):
    from medrecon import api

    _, lat = stages
    model = api.load_model(lat / "last.safetensors", device="cpu")
    assert model.objective == "latent"
    result = api.reconstruct(model, tt.phantom(0), steps=2, seed=3)
    again = api.reconstruct(model, tt.phantom(0), steps=2, seed=3)
    assert result.array.shape == (24, 24, 24) and np.isfinite(result.array).all()
    np.testing.assert_array_equal(result.array, again.array)  # seeded: the same draw


def test_two_dimensional_latent_model_trains_and_reconstructs(manifest, tmp_path):
    flat = [
        "data=slices2d",
        "data.patch_size=16",
        "data.val_items=1",
        "task=sr2x",
        "train.batch_size=2",
        "train.warmup=1",
        "progress=false",
        "device=cpu",
        "train.steps=1",
        "train.val_every=1",
        "val.steps=1",
    ]
    ae, lat = tmp_path / "ae2d", tmp_path / "lat2d"
    assert main(["train", f"manifest={manifest}", f"out={ae}", "objective=autoencoder", *AE, *flat]) == 0
    ae_file = f"autoencoder={ae / 'last.safetensors'}"
    assert main(["train", f"manifest={manifest}", f"out={lat}", "objective=latent", ae_file, *flat]) == 0
    loaded = load_checkpoint(lat / "last.safetensors")
    assert loaded.spatial_dims == 2 and loaded.codec.spatial_dims == 2
    out = tmp_path / "rec2d"
    args = [f"input={manifest}", f"out={out}", f"checkpoint={lat / 'last.safetensors'}", "sampler.steps=1"]
    assert main(["reconstruct", *args, "progress=false"]) == 0
    assert read_nifti(next(out.glob("*.nii.gz"))).array.shape == (48, 48, 12)


# ------------------------------------------------------------------------------------------------ units
class IdentityAutoencoder(nn.Module):
    """``encode(x) = (x, 1)``, ``decode(z) = z``: latent space is image space (one latent channel, factor 1)."""

    latent_channels = 1

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.spatial_dims = spatial_dims
        self.anchor = nn.Parameter(torch.zeros(1))  # a device to report

    def encode(self, x):
        return x, torch.ones_like(x)

    def decode(self, z):
        return z


def tiny_precond(seed: int = 0, spatial_dims: int = 2) -> EDMPrecond:
    from medrecon.nn import UNet

    torch.manual_seed(seed)
    net = UNet(spatial_dims, 2, 1, channels=(8, 16), num_res_blocks=1, attention_levels=(False, False))
    precond = EDMPrecond(net, image_channels=1, cond_channels=1).eval()
    with torch.no_grad():
        for p in precond.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return precond


@pytest.mark.parametrize("guidance", ["none", "dc", "dps"])
def test_with_an_identity_autoencoder_latent_sampling_is_pixel_sampling(guidance):
    """The samplers, EDM preconditioning and guidance wrappers run unchanged in latent space: through an
    autoencoder that changes nothing, a latent posterior draw equals the pixel-space one (for dc and dps,
    followed by the image-space projection the latent method adds, which leaves a dc result unchanged)."""
    task = build_task("sr2x")
    precond = tiny_precond()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    meas = task.degrade(x, torch.Generator().manual_seed(0))
    sampler = build_sampler("ddim", steps=4)
    config = GuidanceConfig(guidance, scale=5.0)
    codec = LatentCodec(IdentityAutoencoder(2), factor=1, scale=1.0)
    latent = latent_posterior(
        precond,
        codec,
        task,
        meas,
        sampler,
        config,
        generators=generators([1, 2]),
        project_output=guidance != "none",
        step_guidance=config,  # every step, as in pixel space (the plan for dc projects the output only)
    ).mean
    pixel = posterior_sample(precond, task, meas, sampler, config, generators=generators([1, 2])).mean
    if guidance != "none":
        pixel = task.project(pixel, meas)
    torch.testing.assert_close(latent, pixel, atol=1e-5, rtol=1e-5)
    if guidance != "none":  # the output is consistent with the measurement
        torch.testing.assert_close(task.forward(latent, meas.params), meas.y, atol=1e-5, rtol=0)


def test_what_each_guidance_runs_for_a_latent_model():
    """The measured plan: dc projects the decoded output only; dps guides every step and projects; none
    neither. With an autoencoder that changes nothing, latent dc is the pixel model's unguided draw, projected."""
    from medrecon.latent.posterior import guidance_plan

    assert [
        (g.name, p) for g, p in map(guidance_plan, [None, GuidanceConfig("none"), GuidanceConfig("dc")])
    ] == [
        ("none", False),
        ("none", False),
        ("none", True),
    ]
    dps = GuidanceConfig("dps", scale=3.0)
    assert guidance_plan(dps) == (dps, True)
    task = build_task("sr2x")
    precond = tiny_precond()
    meas = task.degrade(torch.rand(1, 1, 16, 16) * 2 - 1)
    sampler = build_sampler("ddim", steps=3)
    codec = LatentCodec(IdentityAutoencoder(2), factor=1, scale=1.0)
    latent = latent_posterior(
        precond, codec, task, meas, sampler, GuidanceConfig("dc"), generators=generators([4])
    )
    pixel = posterior_sample(precond, task, meas, sampler, None, generators=generators([4])).mean
    torch.testing.assert_close(latent.mean, task.project(pixel, meas), atol=1e-5, rtol=1e-5)


def test_latent_task_acts_on_decoded_images():
    """``forward`` measures the decoded image, ``project`` projects it and encodes back, and DPS's gradient
    reaches the latent through the decoder of a real (tiny) MONAI autoencoder."""
    from medrecon.diffusion.guidance import dps
    from medrecon.nn.registry import build_autoencoder

    torch.manual_seed(0)
    ae_cfg = {
        "_target_": "monai.networks.nets.AutoencoderKL",
        "channels": [4, 4],
        "attention_levels": [False, False],
        "num_res_blocks": 1,
        "latent_channels": 2,
        "norm_num_groups": 4,
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }
    codec = LatentCodec(build_autoencoder(ae_cfg, spatial_dims=3, channels=1), factor=2, scale=0.7)
    task = build_task("thick_slices", spatial_dims=3, factor=2)
    x = torch.rand(1, 1, 9, 8, 6) * 2 - 1  # an odd side: padded to the factor, cropped back
    meas = task.degrade(x)
    lt = LatentTask(task, codec, x.shape[2:])
    z = codec.encode(x)
    assert z.shape == (1, 2, 5, 4, 3)
    decoded = codec.decode(z, x.shape[2:])
    assert decoded.shape == x.shape
    torch.testing.assert_close(lt.forward(z, meas.params), task.forward(decoded, meas.params))
    torch.testing.assert_close(lt.project(z, meas), codec.encode(task.project(decoded, meas)))
    assert lt.condition(meas).shape == z.shape
    guided = dps(lambda v, s: v, lt, meas, scale=10.0)(z, torch.tensor([0.5]))
    assert torch.isfinite(guided).all() and not torch.equal(guided, z)


def test_tiled_denoiser_blends_windows_of_the_trained_size():
    """Windows of ``tile`` voxels (never more) with Gaussian blending; for a pointwise network the blend
    equals the whole-volume result exactly, so the windows are placed and weighted consistently."""

    class Pointwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(3, 2, 1)
            self.shapes: list[tuple[int, ...]] = []

        def forward(self, x, c_noise):
            self.shapes.append(tuple(x.shape[2:]))
            return self.conv(x) * c_noise.reshape(-1, 1, 1, 1, 1)

    torch.manual_seed(0)
    net = Pointwise()
    precond = EDMPrecond(net, image_channels=2, cond_channels=1)
    x, cond = torch.randn(2, 2, 12, 10, 7), torch.randn(2, 1, 12, 10, 7)
    sigma = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        whole = precond(x, sigma, cond)
        net.shapes.clear()
        tiled = TiledPrecond(precond, (8, 8, 4), overlap=0.5)(x, sigma, cond)
        assert net.shapes and all(s[0] <= 8 and s[1] <= 8 and s[2] <= 4 for s in net.shapes)
        torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
        per_item = TiledPrecond(precond, (8, 8, 4))(x, torch.tensor([0.7, 0.3]), cond)  # one level per item
        torch.testing.assert_close(per_item[:1], whole[:1], atol=1e-5, rtol=1e-5)
    assert TiledPrecond(precond, (8, 8, 4)).image_channels == 2  # attributes pass through


def test_unshuffle_moves_each_voxel_to_its_channel():
    x = torch.arange(2 * 4 * 6 * 2, dtype=torch.float32).reshape(1, 2, 4, 6, 2)
    y = unshuffle(x, 2)
    assert y.shape == (1, 16, 2, 3, 1)
    for c in range(2):
        for di in range(2):
            for dj in range(2):
                for dk in range(2):
                    channel = ((c * 2 + di) * 2 + dj) * 2 + dk
                    torch.testing.assert_close(y[0, channel], x[0, c, di::2, dj::2, dk::2])
    with pytest.raises(ValueError, match="divisible"):
        unshuffle(torch.zeros(1, 1, 3, 4), 2)


def test_autoencoder_loss_is_reconstruction_plus_weighted_kl():
    class Stub(nn.Module):
        def __init__(self, offset: float, mu: float, sigma: float) -> None:
            super().__init__()
            self.offset, self.mu, self.sigma = offset, mu, sigma

        def forward(self, x):
            z = torch.ones(x.shape[0], 2, 3, 3)
            return x + self.offset, self.mu * z, self.sigma * z

    x = torch.zeros(2, 1, 6, 6)
    assert torch.equal(
        AutoencoderLoss(kl_weight=1.0)(Stub(0.0, 0.0, 1.0), x), torch.zeros(2)
    )  # KL(N(0,1)) = 0
    loss = AutoencoderLoss(norm="l1", kl_weight=0.01)(Stub(0.1, 1.0, 1.0), x)
    torch.testing.assert_close(loss, torch.full((2,), 0.1 + 0.01 * 0.5 * 18))  # 0.5 mu^2 summed over 18
    l2 = AutoencoderLoss(norm="l2", kl_weight=0.0)(Stub(0.1, 1.0, 1.0), x)
    torch.testing.assert_close(l2, torch.full((2,), 0.01))
    with pytest.raises(ValueError, match="norm"):
        AutoencoderLoss(norm="l3")


def test_fit_scale_gives_latents_sigma_datas_std():
    codec_ae = IdentityAutoencoder(2)
    batches = [torch.randn(4, 1, 8, 8) * 3.0 for _ in range(3)]
    std = float(torch.cat([b.flatten() for b in batches]).std())
    assert fit_scale(codec_ae, batches, sigma_data=0.5) == pytest.approx(0.5 / std)
    with pytest.raises(ValueError, match="spread"):
        fit_scale(codec_ae, [torch.zeros(2, 1, 4, 4)], 0.5)


def test_latent_method_samples_per_unit_seeds():
    """Same seeds, same result whatever the batch: a unit's draws depend on its own seed only."""
    task = build_task("sr2x")
    codec = LatentCodec(IdentityAutoencoder(2), factor=1, scale=1.0)
    method = LatentMethod(tiny_precond(), codec, task, build_sampler("ddim", steps=3), GuidanceConfig("dc"))
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    meas = task.degrade(x)
    both, _ = method(meas, None, [5, 6, 7])
    one, _ = method(meas.index([1]), None, [6])
    torch.testing.assert_close(both[1:2], one)


def test_the_two_spellings_of_each_stage():
    """docs/usage.md's ``model=autoencoder`` and ``model=latent model.autoencoder=FILE`` imply the objective;
    the file is no network option and the stored network is the plain U-Net."""
    from hydra import compose, initialize_config_dir

    from medrecon.errors import UsageError
    from medrecon.train.latent import model_config, training_objective

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        stage1 = compose("train", ["model=autoencoder", "manifest=m", "out=o"])
        stage2 = compose(
            "train", ["model=latent", "model.autoencoder=/data/ae.safetensors", "manifest=m", "out=o"]
        )
        plain = compose("train", ["objective=latent", "autoencoder=ae.safetensors", "manifest=m", "out=o"])
        wrong = compose("train", ["model=autoencoder", "objective=regression", "manifest=m", "out=o"])
    assert training_objective(stage1) == "autoencoder"
    assert model_config(stage1)["_target_"] == "monai.networks.nets.AutoencoderKL"
    assert training_objective(stage2) == training_objective(plain) == "latent"
    network = model_config(stage2)
    assert network["_target_"] == "medrecon.nn.unet.UNet" and "autoencoder" not in network
    with pytest.raises(UsageError, match="objective=autoencoder"):
        training_objective(wrong)
