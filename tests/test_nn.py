"""The conditional U-Net: 2D/3D shapes at odd sizes, zero-initialised output, validation, model sizes."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medrecon.nn import UNet, count_parameters

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def perturbed(net: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (the zero-initialised convolutions would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def tiny(spatial_dims: int = 2, in_channels: int = 2, **kw) -> UNet:
    kw = {"channels": (8, 16), "attention_levels": (False, True), "num_heads": 2, **kw}
    return UNet(spatial_dims, in_channels, 1, **kw)


@pytest.mark.parametrize(
    ("spatial_dims", "size"), [(2, (17, 23)), (2, (1, 5)), (2, (32, 32)), (3, (7, 9, 5)), (3, (8, 8, 8))]
)
def test_output_shape_any_size(spatial_dims, size):
    net = perturbed(
        UNet(spatial_dims, 3, 2, channels=(8, 16, 16), attention_levels=(False, False, True), num_heads=2)
    )
    x = torch.randn(2, 3, *size)
    out = net(x, torch.zeros(2))
    assert out.shape == (2, 2, *size)
    assert torch.isfinite(out).all()


def test_untrained_output_is_zero_and_conditioning_matters_once_trained():
    net = tiny()
    x = torch.randn(2, 2, 12, 12)
    assert torch.count_nonzero(net(x, torch.zeros(2))) == 0  # zero-initialised last convolution
    perturbed(net)
    a = net(x, torch.zeros(2))
    b = net(x, torch.ones(2))  # the noise level changes the output
    x2 = x.clone()
    x2[:, 1] += 1.0  # so does the condition channel
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, net(x2, torch.zeros(2)))


def test_samples_do_not_interact_across_the_batch():
    net = perturbed(tiny()).eval()
    x = torch.randn(3, 2, 10, 14)
    c = torch.tensor([0.1, -0.3, 0.5])
    full = net(x, c)
    single = net(x[1:2], c[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-5, atol=1e-6)


def test_channels_last_matches_contiguous():
    net = perturbed(tiny()).eval()
    x = torch.randn(2, 2, 16, 12)
    ref = net(x, torch.zeros(2))
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last), torch.zeros(2))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_scalar_noise_level_broadcasts_and_avgpool_downsampling():
    net = perturbed(tiny(downsample="avgpool"))
    x = torch.randn(2, 2, 9, 9)
    torch.testing.assert_close(net(x, torch.tensor(0.2)), net(x, torch.full((2,), 0.2)))


def test_gradients_reach_every_parameter():
    net = perturbed(tiny())
    net(torch.randn(2, 2, 8, 8), torch.zeros(2)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"channels": ()}, "channels"),
        ({"attention_levels": (False,)}, "attention_levels"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"dropout": 1.5}, "dropout"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"downsample": "maxpool"}, "maxpool"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_constructor_validation(kwargs, message):
    args = {"spatial_dims": 2, "in_channels": 2, "out_channels": 1, "channels": (8, 16)}
    args.update({"attention_levels": (False, True), "num_heads": 2})
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        UNet(**args)


def test_forward_rejects_wrong_input_channels():
    with pytest.raises(ValueError, match="expected x"):
        tiny()(torch.randn(1, 3, 8, 8), torch.zeros(1))


def test_count_parameters():
    lin = torch.nn.Linear(3, 4)
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12


@pytest.mark.parametrize(("name", "low", "high"), [("unet_tiny", 0, 1e6), ("unet_small", 20e6, 40e6)])
def test_model_configs_instantiate_with_shape_facts_at_runtime(name, low, high):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert not {"spatial_dims", "in_channels", "out_channels"} & set(cfg)  # shape facts come from data/task
    net = instantiate(cfg, spatial_dims=2, in_channels=2, out_channels=1)
    assert isinstance(net, UNet)
    assert low < count_parameters(net) < high


def test_base_config_is_larger_than_small():
    sizes = {
        n: count_parameters(
            instantiate(OmegaConf.load(CONF / f"{n}.yaml"), spatial_dims=2, in_channels=2, out_channels=1)
        )
        for n in ("unet_small", "unet_base")
    }
    assert sizes["unet_base"] > 1.5 * sizes["unet_small"]


def test_tiny_config_runs_in_3d_with_25d_context_channels():
    # 2.5D: image channel + 3 stacked neighbouring condition slices -> in_channels = 1 + 1 * 3
    net = instantiate(OmegaConf.load(CONF / "unet_tiny.yaml"), spatial_dims=3, in_channels=4, out_channels=1)
    out = net(torch.randn(1, 4, 5, 6, 7), torch.zeros(1))
    assert out.shape == (1, 1, 5, 6, 7)
