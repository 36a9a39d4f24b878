"""The fastMRI evaluation protocol against hand-computed values and scikit-image called as fastMRI calls it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from medrecon.evaluate.fastmri_protocol import evaluation_crop, score_volume


def test_evaluation_crop_is_the_centre_square_of_the_target_width():
    target = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    recon = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    gt, pred = evaluation_crop(target, recon)
    # (5 - 3) // 2 = 1 row off the top of the target; (6 - 3) // 2 = 1 row and (5 - 3) // 2 = 1 column of the
    # reconstruction
    np.testing.assert_array_equal(gt, target[:, 1:4, :])
    np.testing.assert_array_equal(pred, recon[:, 1:4, 1:4])
    with pytest.raises(ValueError, match="centre-crop"):  # shorter than wide: fastMRI refuses it too
        evaluation_crop(np.ones((1, 3, 4), np.float32), np.ones((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="slices"):
        evaluation_crop(np.ones((2, 4, 4), np.float32), np.ones((3, 4, 4), np.float32))


def test_psnr_and_nmse_by_hand_with_the_cropped_volumes_maximum():
    # target (2, 9, 8): the crop to (8, 8) drops row 8 ((9 - 8) // 2 = 0 rows off the top), where a 100 sits
    target = np.full((2, 9, 8), 2.0, np.float32)
    target[:, 8, :] = 100.0
    target[0, 3, 3] = 4.0  # the maximum of the cropped volume
    recon = target[:, :8, :] + 0.5  # every voxel off by 0.5
    scores = score_volume(target, recon)
    # MSE = 0.25, data range = 4: PSNR = 10 log10(16 / 0.25) = 10 log10(64)
    assert scores.psnr == pytest.approx(10 * math.log10(64.0), abs=1e-9)
    # NMSE = 128 * 0.25 / (127 * 2^2 + 4^2) = 32 / 524
    assert scores.nmse == pytest.approx(32.0 / 524.0, rel=1e-12)


def test_ssim_of_constant_slices_by_hand():
    # constant images a and b: zero variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 R)^2
    target = np.ones((2, 8, 8), np.float32)
    recon = np.full((2, 8, 8), 0.5, np.float32)
    c1 = (0.01 * 1.0) ** 2
    assert score_volume(target, recon).ssim == pytest.approx((1.0 + c1) / (1.25 + c1), rel=1e-6)
    with np.errstate(divide="ignore"):  # MSE 0: PSNR is infinite, as scikit-image returns it
        same = score_volume(target, target)
    assert same.ssim == pytest.approx(1.0) and same.nmse == 0.0 and same.psnr == math.inf


def test_ssim_equals_scikit_image_called_as_fastmri_does():
    rng = np.random.default_rng(0)
    target = rng.random((3, 12, 10)).astype(np.float32)
    target[1] *= 3.0  # slices with different maxima: the volume's maximum is the data range for every slice
    recon = (target[:, 1:11, :] + 0.1 * rng.normal(size=(3, 10, 10))).astype(np.float32)
    scores = score_volume(target, recon)
    gt = target[:, 1:11, :]  # (12 - 10) // 2 = 1
    expected = sum(structural_similarity(gt[s], recon[s], data_range=gt.max()) for s in range(3)) / 3
    assert scores.ssim == pytest.approx(expected, rel=1e-12)
    assert scores.ssim < 0.99
    metrics = scores.as_volume_metrics()
    assert (metrics.psnr, metrics.ssim, metrics.nmse) == (scores.psnr, scores.ssim, scores.nmse)
    assert all(math.isnan(v) for v in (metrics.psnr_fg, metrics.ssim_fg, metrics.nmse_fg))


def test_unscorable_volumes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        score_volume(np.zeros((1, 8, 8), np.float32), np.zeros((1, 8, 8), np.float32))
    bad = np.ones((1, 8, 8), np.float32)
    bad[0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        score_volume(np.ones((1, 8, 8), np.float32), bad)
