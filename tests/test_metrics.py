"""Metrics against scikit-image and fastMRI's reference formulas (fastmri/evaluate.py, copied below)."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from medrecon.evaluate import metrics as M


# fastMRI's reference implementation (facebookresearch/fastMRI, fastmri/evaluate.py), slices along axis 0
def fastmri_nmse(gt, pred):
    return np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2


def fastmri_psnr(gt, pred, maxval=None):
    maxval = gt.max() if maxval is None else maxval
    return peak_signal_noise_ratio(gt, pred, data_range=maxval)


def fastmri_ssim(gt, pred, maxval=None):
    maxval = gt.max() if maxval is None else maxval
    total = 0.0
    for s in range(gt.shape[0]):
        total = total + structural_similarity(gt[s], pred[s], data_range=maxval)
    return total / gt.shape[0]


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    gt = np.zeros((3, 20, 18))
    gt[:, 4:16, 3:15] = 100.0 + 20 * rng.random((3, 12, 12))
    pred = gt + rng.normal(0, 5, gt.shape)
    return gt, pred


def test_whole_volume_metrics_match_fastmri(pair):
    gt, pred = pair
    m = M.volume_metrics(gt, pred)
    assert m.psnr == pytest.approx(fastmri_psnr(gt, pred), rel=1e-12)
    assert m.ssim == pytest.approx(fastmri_ssim(gt, pred), rel=1e-12)
    assert m.nmse == pytest.approx(fastmri_nmse(gt, pred), rel=1e-12)
    # fixed-value sanity: PSNR from the closed form 10 log10(max^2 / mse)
    assert m.psnr == pytest.approx(10 * np.log10(gt.max() ** 2 / np.mean((gt - pred) ** 2)), rel=1e-12)


def test_slice_axis_moves_the_ssim_slices(pair):
    gt, pred = pair
    moved = M.ssim(np.moveaxis(gt, 0, 2), np.moveaxis(pred, 0, 2), slice_axis=2)
    assert moved == pytest.approx(fastmri_ssim(gt, pred), rel=1e-12)


def test_known_values():
    gt = np.full((1, 8, 8), 2.0)
    pred = gt.copy()
    pred[0, 0, 0] = 0.0  # one error of 2 over 64 voxels: mse = 4/64, nmse = 4 / (64*4)
    assert M.nmse(gt, pred) == pytest.approx(1 / 64)
    assert M.psnr(gt, pred) == pytest.approx(10 * np.log10(4 / (4 / 64)))
    assert M.ssim(gt, gt) == pytest.approx(1.0)


def test_signed_volume_uses_max_minus_min():
    gt = np.linspace(-1000.0, 1000.0, 2 * 8 * 8).reshape(2, 8, 8)
    pred = gt + 10.0
    assert M.volume_data_range(gt) == pytest.approx(2000.0)
    assert M.psnr(gt, pred) == pytest.approx(10 * np.log10(2000.0**2 / 100.0))


def test_foreground_mask_threshold_and_dilation():
    gt = np.zeros((1, 11, 11))
    gt[0, 5, 5] = 100.0
    gt[0, 0, 0] = 4.0  # below 5 % of the maximum
    undilated = M.foreground_mask(gt, dilation=0)
    assert undilated.sum() == 1 and undilated[0, 5, 5]
    dilated = M.foreground_mask(gt, dilation=2)
    assert dilated.sum() == 13  # a 4-connected diamond of radius 2
    assert not dilated[0, 0, 0]


def test_foreground_metrics_match_a_direct_computation(pair):
    gt, pred = pair
    m = M.volume_metrics(gt, pred, fg_fraction=0.05, fg_dilation=1)
    mask = M.foreground_mask(gt, 0.05, 1)
    assert 0 < mask.sum() < mask.size
    diff = (gt - pred)[mask]
    assert m.psnr_fg == pytest.approx(10 * np.log10(gt.max() ** 2 / np.mean(diff**2)))
    assert m.nmse_fg == pytest.approx(np.sum(diff**2) / np.sum(gt[mask] ** 2))
    maps = [structural_similarity(g, p, data_range=gt.max(), full=True)[1] for g, p in zip(gt, pred)]
    assert m.ssim_fg == pytest.approx(np.concatenate([s[k] for s, k in zip(maps, mask)]).mean())
    # masking out the exact-zero background makes the score harder than the whole-volume one
    assert m.psnr_fg < m.psnr


def test_small_slices_use_the_largest_window_that_fits():
    rng = np.random.default_rng(1)
    gt = 10 + rng.random((2, 12, 5))
    pred = gt + rng.normal(0, 0.1, gt.shape)
    expected = np.mean(
        [structural_similarity(g, p, data_range=gt.max(), win_size=5) for g, p in zip(gt, pred)]
    )
    assert M.ssim(gt, pred) == pytest.approx(expected)
    assert np.isnan(M.ssim(gt[:, :, :2], pred[:, :, :2]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        M.volume_metrics(np.ones((2, 8, 8)), np.ones((2, 8, 9)))
    with pytest.raises(ValueError, match="data range"):
        M.volume_metrics(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="fraction"):
        M.foreground_mask(np.ones((1, 8, 8)), fraction=1.5)


# ------------------------------------------------------------------------------------------------ through-plane
def test_slice_gradient_error_against_a_numpy_reference():
    rng = np.random.default_rng(3)
    gt = rng.random((6, 7, 9))
    pred = gt + 0.1 * rng.standard_normal(gt.shape)
    d_gt, d_pred = gt[:, :, 1:] - gt[:, :, :-1], pred[:, :, 1:] - pred[:, :, :-1]
    expected = np.linalg.norm(d_pred - d_gt) / np.linalg.norm(d_gt)
    assert M.slice_gradient_error(gt, pred) == pytest.approx(expected)
    assert M.slice_gradient_error(gt, gt) == 0.0
    # nothing of the through-plane structure (constant along K): error 1, whatever the in-plane content
    flat = np.repeat(gt.mean(axis=2, keepdims=True), gt.shape[2], axis=2)
    assert M.slice_gradient_error(gt, flat) == pytest.approx(1.0)
    # scale-free: the same relative error for volumes in other units
    assert M.slice_gradient_error(100 * gt, 100 * pred) == pytest.approx(expected)
    assert np.isnan(M.slice_gradient_error(gt[:, :, :1], pred[:, :, :1]))  # one slice: undefined


def test_slice_gradient_error_sees_through_plane_steps_that_in_plane_metrics_average_away():
    """Nearest-neighbour thick slices (steps every 4 slices) against a smooth interpolation with the same
    per-voxel error budget: the gradient error separates them."""
    k = np.linspace(0, 4 * np.pi, 32)
    gt = np.broadcast_to(np.sin(k), (8, 8, 32)).copy() + 2
    blocks = gt.reshape(8, 8, 8, 4).mean(-1)
    nearest = np.repeat(blocks, 4, axis=2)
    smooth = np.interp(np.arange(32), np.arange(8) * 4 + 1.5, blocks[0, 0])
    smooth = np.broadcast_to(smooth, gt.shape)
    assert M.slice_gradient_error(gt, nearest) > M.slice_gradient_error(gt, smooth)


def test_slice_gradient_error_leaves_out_differences_without_ground_truth():
    rng = np.random.default_rng(4)
    gt = rng.random((4, 4, 6))
    pred = gt.copy()
    pred[0, 0, 3] += 5.0  # a wild value where there is no ground truth
    valid = np.ones(gt.shape, dtype=bool)
    valid[0, 0, 3] = False
    assert M.slice_gradient_error(gt, pred, valid=valid) == 0.0
    assert M.slice_gradient_error(gt, pred) > 0
    metrics = M.volume_metrics(gt + 1, pred + 1, slice_axis=2, valid=valid)
    assert metrics.slice_gradient_error == 0.0 and "slice_gradient_error" in M.METRIC_NAMES
