"""``model=monai_unet``: MONAI's DiffusionModelUNet behind our network interface ``net(x, c_noise)``.

The adapter (shapes at odd 2D/3D sizes, condition channels, the ``timesteps = timestep_scale * c_noise``
mapping, determinism, validation), its closed-registry spec (meta-device size check, checkpoint round trip in 2D
and 3D), and ``medrecon train model=monai_unet`` -> ``reconstruct`` -> ``info`` on a tiny synthetic scan (CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_train as tt
import torch
from monai.networks.nets import DiffusionModelUNet
from omegaconf import OmegaConf
from safetensors import safe_open

from medrecon.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from medrecon.cli import main
from medrecon.data.encoder import Encoder
from medrecon.diffusion import EDMPrecond
from medrecon.io.nifti import read_nifti
from medrecon.nn import count_parameters
from medrecon.nn.monai_unet import MonaiUNet
from medrecon.nn.registry import NETWORKS, build_network
from medrecon.physics.registry import task_config
from medrecon.schema import SchemaError

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
TARGET = "medrecon.nn.monai_unet.MonaiUNet"
SMALL = {"channels": (8, 16), "attention_levels": (False, True), "num_head_channels": 8, "norm_num_groups": 8}


def perturbed(net: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (MONAI's zero-initialised output would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def small(spatial_dims: int = 2, in_channels: int = 2, **kw) -> MonaiUNet:
    return MonaiUNet(spatial_dims, in_channels, 1, **{**SMALL, **kw})


# ------------------------------------------------------------------------------------------------ adapter
@pytest.mark.parametrize(
    ("spatial_dims", "size"), [(2, (17, 23)), (2, (1, 5)), (2, (16, 16)), (3, (7, 9, 5))]
)
def test_output_shape_at_any_size_in_2d_and_3d(spatial_dims, size):
    net = perturbed(small(spatial_dims, in_channels=3, channels=(8, 16, 16), attention_levels=(False,) * 3))
    out = net(torch.randn(2, 3, *size), torch.tensor([-1.5, 1.0]))
    assert out.shape == (2, 1, *size) and torch.isfinite(out).all()


def test_untrained_output_is_zero_and_noise_level_and_condition_matter_once_trained():
    net = small()
    x = torch.randn(2, 2, 12, 12)
    assert torch.count_nonzero(net(x, torch.zeros(2))) == 0  # MONAI zero-initialises its output convolution
    perturbed(net)
    a = net(x, torch.zeros(2))
    x2 = x.clone()
    x2[:, 1] += 1.0  # the condition channel
    assert not torch.allclose(a, net(x, torch.full((2,), 0.5)))
    assert not torch.allclose(a, net(x2, torch.zeros(2)))


def test_c_noise_reaches_monai_as_scaled_float_timesteps():
    net = perturbed(small(timestep_scale=250.0)).eval()
    x, c = torch.randn(2, 2, 16, 16), torch.tensor([-1.2, 0.7])
    direct = net.unet(x, timesteps=250.0 * c)  # sizes are multiples of 2: no padding
    torch.testing.assert_close(net(x, c), direct)
    other = perturbed(small(timestep_scale=1.0)).eval()  # same weights, another scale
    torch.testing.assert_close(other(x, 250.0 * c), direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((2,), 0.3)))  # scalar broadcasts


def test_odd_sizes_are_replicate_padded_and_cropped_back():
    net = perturbed(small()).eval()
    x, c = torch.randn(1, 2, 9, 7), torch.tensor([0.2])
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")
    torch.testing.assert_close(net(x, c), net.unet(padded, timesteps=c * net.timestep_scale)[..., :9, :7])


def test_deterministic_init_and_batch_independent_output():
    torch.manual_seed(3)
    a = small()
    torch.manual_seed(3)
    b = small()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    net = perturbed(a).eval()
    x, c = torch.randn(3, 2, 10, 14), torch.tensor([0.1, -0.3, 0.5])
    full = net(x, c)
    torch.testing.assert_close(net(x, c), full, rtol=0, atol=0)
    torch.testing.assert_close(net(x[1:2], c[1:2]), full[1:2], rtol=1e-5, atol=1e-6)


def test_channels_last_matches_contiguous():
    net = perturbed(small()).eval()
    x = torch.randn(2, 2, 16, 12)
    ref = net(x, torch.zeros(2))
    out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), torch.zeros(2))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_the_monai_network_is_a_plain_diffusion_model_unet_with_our_options():
    net = small(num_res_blocks=2, resblock_updown=True)
    assert type(net.unet) is DiffusionModelUNet
    assert tuple(net.unet.block_out_channels) == (8, 16) and tuple(net.unet.num_res_blocks) == (2, 2)
    plain = DiffusionModelUNet(2, 2, 1, num_res_blocks=2, resblock_updown=True, **SMALL)
    assert (
        net.unet.state_dict().keys() == plain.state_dict().keys()
    )  # MONAI weights of this architecture load
    net.unet.load_state_dict(plain.state_dict())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"channels": (8, 12)}, "norm_num_groups"),
        ({"num_head_channels": 32}, "num_head_channels"),  # wider than a level's channels
        ({"num_head_channels": 3}, "num_head_channels"),
        ({"attention_levels": (True,)}, "attention_levels"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"timestep_scale": 0.0}, "timestep_scale"),
    ],
)
def test_constructor_refuses_options_that_do_not_fit(change, match):
    kw = {"spatial_dims": 2, "in_channels": 2, "out_channels": 1, **SMALL, **change}
    with pytest.raises(ValueError, match=match):
        MonaiUNet(**kw)


def test_input_of_the_wrong_channels_or_dimensions_is_refused():
    with pytest.raises(ValueError, match="expected x"):
        small()(torch.randn(1, 3, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="expected x"):
        small()(torch.randn(1, 2, 8, 8, 8), torch.zeros(1))


# ------------------------------------------------------------------------------------------------ registry
def test_conf_model_builds_through_the_closed_registry_sized_like_unet_tiny():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "monai_unet.yaml"))
    tiny = OmegaConf.to_container(OmegaConf.load(CONF / "unet_tiny.yaml"))
    assert cfg["_target_"] == TARGET and TARGET in NETWORKS
    assert cfg["channels"] == tiny["channels"] and cfg["attention_levels"] == tiny["attention_levels"]
    net = build_network(cfg, spatial_dims=2, in_channels=2, out_channels=1)
    assert isinstance(net, MonaiUNet)
    ours = build_network(tiny, spatial_dims=2, in_channels=2, out_channels=1)
    assert 1.0 <= count_parameters(net) / count_parameters(ours) < 1.5
    with pytest.raises(SchemaError, match="with_conditioning"):  # MONAI options we do not expose are refused
        build_network({**cfg, "with_conditioning": True}, spatial_dims=2, in_channels=2, out_channels=1)


def spec(spatial_dims: int = 2) -> ModelSpec:
    task = {**task_config("denoise"), "spatial_dims": spatial_dims}
    model = {"_target_": TARGET, **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items()}}
    return ModelSpec(model=model, task=task, spatial_dims=spatial_dims, image_channels=1, cond_channels=1)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_checkpoint_round_trip_in_2d_and_3d(spatial_dims, tmp_path):
    s = spec(spatial_dims)
    state = s.expected_state()  # built on the meta device
    assert all(name.startswith("net.unet.") for name in state)
    torch.manual_seed(0)
    precond = perturbed(s.build_precond())
    path = save_checkpoint(
        tmp_path / "m.safetensors", raw=precond, ema=None, spec=s, encoder=Encoder(), config={}, step=1
    )
    loaded = load_checkpoint(path)
    assert isinstance(loaded.precond.net, MonaiUNet) and loaded.spatial_dims == spatial_dims
    x = torch.randn(2, 1, *([6] * spatial_dims))
    cond = torch.randn_like(x)
    with torch.no_grad():
        torch.testing.assert_close(loaded.precond(x, 0.7, cond), precond.eval()(x, 0.7, cond))


def test_the_size_check_draws_no_random_numbers():
    s = spec()
    torch.manual_seed(7)
    direct = s._construct().state_dict()
    torch.manual_seed(7)
    checked = s.build_precond().state_dict()
    assert all(torch.equal(direct[k], checked[k]) for k in direct)


def test_precond_around_the_adapter_denoises_with_our_interface():
    precond = EDMPrecond(perturbed(small()), image_channels=1, cond_channels=1)
    x = torch.randn(2, 1, 11, 13)
    out = precond(x, torch.tensor([0.5, 3.0]), torch.randn_like(x))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="in_channels"):
        EDMPrecond(small(in_channels=3), image_channels=1, cond_channels=1)


# ------------------------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """``medrecon train model=monai_unet`` for 3 steps (validated at step 2) on a 24x24x12 MR phantom."""
    root = tmp_path_factory.mktemp("monai")
    manifest = tt.write_phantom_manifest(root)
    out = root / "run"
    args = [
        "train", f"manifest={manifest}", f"out={out}", "task=denoise", "model=monai_unet", "device=cpu",
        "model.channels=[16,32]", "model.attention_levels=[false,true]", "model.norm_num_groups=16",
        "data.patch_size=16", "train.steps=3", "train.warmup=1", "train.lr=1e-3", "train.val_every=2",
        "val.steps=2", "data.val_items=2",
    ]  # fmt: skip
    assert main(args) == 0
    return out / "last.safetensors", root / "vol1.nii.gz"


def test_train_writes_a_monai_checkpoint_whose_weights_moved(trained):
    ckpt, _ = trained
    loaded = load_checkpoint(ckpt)
    assert isinstance(loaded.precond.net, MonaiUNet) and loaded.step == 3
    assert loaded.spec.model["_target_"] == TARGET and loaded.spec.model["channels"] == [16, 32]
    with safe_open(str(ckpt), framework="pt") as f:
        out_w = f.get_tensor("raw.net.unet.out.2.conv.weight")
    assert torch.count_nonzero(out_w) > 0  # zero at initialisation: training changed it


def test_reconstruct_and_info_read_a_monai_checkpoint(trained, tmp_path, capsys):
    ckpt, scan = trained
    out = tmp_path / "recon"
    args = [
        "reconstruct", f"input={scan}", f"checkpoint={ckpt}", f"out={out}", "device=cpu",
        "sampler=ddim", "sampler.steps=2", "progress=false",
    ]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"]
    vol = read_nifti(out / f"{records[0]['id']}.nii.gz")
    assert vol.array.shape == tt.SHAPE and np.isfinite(vol.array).all() and vol.array.std() > 0

    capsys.readouterr()
    assert main(["info", f"checkpoint={ckpt}", "format=json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["network"] == TARGET and card["network_options"]["channels"] == [16, 32]
    assert card["parameters"] == count_parameters(load_checkpoint(ckpt).precond)
    assert card["step"] == 3 and card["task_name"] == "denoise"
