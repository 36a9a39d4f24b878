"""EDM preconditioning, the EDM loss and the Karras schedule."""

import math

import pytest
import torch

from medrecon.diffusion import EDMLoss, EDMPrecond, karras_sigmas
from medrecon.nn import UNet


def perturbed(net: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def make_precond(cond_channels: int = 1) -> EDMPrecond:
    net = UNet(2, 1 + cond_channels, 1, channels=(8, 16), attention_levels=(False, True), num_heads=2)
    return EDMPrecond(net, image_channels=1, cond_channels=cond_channels)


class Recorder(torch.nn.Module):
    """A fake network that records its inputs and returns a constant."""

    in_channels = 2

    def forward(self, x, c_noise):
        self.x, self.c_noise = x, c_noise
        return torch.ones_like(x[:, :1])


def test_coefficients_follow_edm_table_1():
    rec = Recorder()
    precond = EDMPrecond(rec, image_channels=1, cond_channels=1, sigma_data=0.5)
    x = torch.randn(2, 1, 4, 4)
    cond = torch.randn(2, 1, 4, 4)
    sigma = torch.tensor([0.1, 3.0])
    out = precond(x, sigma, cond)
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = 0.25 / (s**2 + 0.25)
    c_out = s * 0.5 / (s**2 + 0.25).sqrt()
    c_in = 1 / (s**2 + 0.25).sqrt()
    torch.testing.assert_close(out, c_skip * x + c_out)
    torch.testing.assert_close(rec.x[:, :1], c_in * x)  # the image is scaled ...
    torch.testing.assert_close(rec.x[:, 1:], cond)  # ... the condition is concatenated unscaled
    torch.testing.assert_close(rec.c_noise, sigma.log() / 4)
    # unit-variance network input for x = x0 + sigma n with std(x0) = sigma_data
    torch.testing.assert_close(c_in**2 * (0.25 + s**2), torch.ones_like(s))


def test_none_condition_means_zeros_and_shapes_are_checked():
    precond = perturbed(make_precond())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(precond(x, 0.7, None), precond(x, 0.7, torch.zeros(2, 1, 8, 8)))
    with pytest.raises(ValueError, match="cond must be"):
        precond(x, 0.7, torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match="in_channels"):
        EDMPrecond(UNet(2, 3, 1, channels=(8,), attention_levels=(False,)), image_channels=1, cond_channels=1)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(Recorder(), 1, 1, sigma_data=0.0)


def test_untrained_denoiser_is_the_skip_path_and_large_sigma_predicts_near_zero():
    precond = make_precond()  # zero-initialised output layer: D = c_skip x
    x = torch.randn(1, 1, 8, 8) * 80
    out = precond(x, 80.0, torch.zeros(1, 1, 8, 8))
    assert out.abs().max() < 0.01 * x.abs().max()


def test_loss_is_per_sample_finite_and_trains():
    torch.manual_seed(0)
    precond = make_precond()
    loss_fn = EDMLoss()
    x0 = torch.randn(4, 1, 12, 12) * 0.5
    cond = torch.randn(4, 1, 12, 12)
    opt = torch.optim.AdamW(precond.parameters(), lr=1e-3)
    for _ in range(2):  # step 1 moves the zero-initialised output layer, step 2 reaches the stem
        opt.zero_grad()
        loss = loss_fn(precond, x0, cond, generator=torch.Generator().manual_seed(1))
        assert loss.shape == (4,)
        assert torch.isfinite(loss).all()
        loss.mean().backward()
        opt.step()
    assert precond.net.out_conv.weight.grad.abs().sum() > 0
    assert precond.net.stem.weight.grad.abs().sum() > 0


def test_loss_is_reproducible_from_the_generator_and_dropout_zeroes_the_condition():
    precond = perturbed(make_precond())
    x0 = torch.randn(3, 1, 8, 8)
    cond = torch.randn(3, 1, 8, 8)

    def run(loss_fn, c):
        return loss_fn(precond, x0, c, generator=torch.Generator().manual_seed(7))

    torch.testing.assert_close(run(EDMLoss(), cond), run(EDMLoss(), cond))
    dropped = run(EDMLoss(cond_drop_prob=1.0), cond)
    torch.testing.assert_close(dropped, run(EDMLoss(cond_drop_prob=0.0), torch.zeros_like(cond)))
    assert not torch.allclose(dropped, run(EDMLoss(cond_drop_prob=0.0), cond))


def test_loss_per_item_generators_make_items_independent_of_the_batch():
    precond = perturbed(make_precond())
    x0, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    both = EDMLoss()(precond, x0, cond, generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    second = EDMLoss()(precond, x0[1:], cond[1:], generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-6)


def test_loss_validation():
    with pytest.raises(ValueError, match="cond_drop_prob"):
        EDMLoss(cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="P_std"):
        EDMLoss(P_std=0.0)


def test_karras_sigmas():
    s = karras_sigmas(10, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert s.shape == (11,)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert (s[:-1] > s[1:]).all()
    # eq. 5 of Karras et al. at i = 5 of 10
    mid = (80 ** (1 / 7) + 5 / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert math.isclose(s[5].item(), mid, rel_tol=1e-12)
    assert karras_sigmas(1).tolist() == [80.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": 0}, {"steps": 2.5}, {"steps": 5, "sigma_min": 1.0, "sigma_max": 0.5}, {"steps": 5, "rho": 0}],
)
def test_karras_sigmas_validation(kwargs):
    with pytest.raises(ValueError):
        karras_sigmas(**kwargs)
