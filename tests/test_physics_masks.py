"""fastMRI-style Cartesian masks: exact line counts, centre block, seeded reproducibility."""

import pytest
import torch

from medrecon.physics.masks import EquispacedMaskFunc, RandomMaskFunc, make_mask_func


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cls", [RandomMaskFunc, EquispacedMaskFunc])
@pytest.mark.parametrize(("accel", "cf", "num_cols", "n_low"), [(4, 0.08, 320, 26), (8, 0.04, 368, 15)])
def test_exact_acceleration_and_centre(cls, accel, cf, num_cols, n_low):
    func = cls(cf, accel)
    for seed in range(5):
        mask = func(num_cols, gen(seed))
        assert mask.shape == (num_cols,) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert int(mask.sum()) == num_cols // accel  # exact acceleration
        pad = (num_cols - n_low + 1) // 2
        assert mask[pad : pad + n_low].all()  # fully sampled centre block (fastMRI placement)
        assert mask[num_cols // 2] == 1
        assert func.num_low_frequencies(num_cols) == n_low


def test_random_outer_lines_are_not_all_centre_adjacent():
    mask = RandomMaskFunc(0.08, 4)(320, gen(0))
    assert mask[:100].sum() > 0 and mask[-100:].sum() > 0


def test_equispaced_outer_lines_are_evenly_spaced():
    func = EquispacedMaskFunc(0.08, 4)
    mask = func(320, gen(3))
    centre = func.center_mask(320)
    outer = torch.nonzero(~centre).flatten()
    picked = torch.nonzero(mask[outer] > 0).flatten()  # positions within the non-centre lines
    gaps = torch.diff(picked)
    step = len(outer) / (80 - 26)
    assert gaps.min() >= int(step) and gaps.max() <= int(step) + 1


@pytest.mark.parametrize("cls", [RandomMaskFunc, EquispacedMaskFunc])
def test_seeded_reproducibility(cls):
    func = cls(0.08, 4)
    assert torch.equal(func(320, gen(7)), func(320, gen(7)))
    draws = {tuple(func(320, gen(s)).tolist()) for s in range(6)}
    assert len(draws) > 1


def test_odd_and_tiny_sizes():
    for cls in (RandomMaskFunc, EquispacedMaskFunc):
        mask = cls(0.04, 8)(21, gen(0))
        assert int(mask.sum()) == round(21 / 8) and mask[10] == 1


def test_invalid_options():
    with pytest.raises(ValueError, match="mask_type"):
        make_mask_func("radial", 0.08, 4)
    with pytest.raises(ValueError, match="center_fraction"):
        RandomMaskFunc(1.5, 4)
    with pytest.raises(ValueError, match="acceleration"):
        EquispacedMaskFunc(0.08, 0.5)
