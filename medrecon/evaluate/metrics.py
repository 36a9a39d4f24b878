"""Image-quality metrics per volume in fastMRI's convention, plus a foreground-masked variant.

All functions take a ground-truth and a reconstructed volume of the same shape ``(..., H, W)`` stacked as 2D
slices along ``slice_axis`` (default 0), in the scanner's intensity units (never encoded [-1, 1] values).

Convention (facebookresearch/fastMRI ``fastmri/evaluate.py``):

- ``data_range`` = the ground-truth *volume's* maximum. Volumes with negative values (CT in HU) use
  ``max - min`` instead, so PSNR stays meaningful for signed data; for non-negative volumes (MR magnitude)
  this is exactly fastMRI's ``gt.max()``.
- PSNR = ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range)`` over the whole volume.
- SSIM = mean over slices of ``skimage.metrics.structural_similarity(gt[s], pred[s], data_range)`` (7x7
  uniform window, scikit-image defaults). Slices with a side shorter than 7 use the largest odd window that
  fits (NaN below 3).
- NMSE = ``||gt - pred||^2 / ||gt||^2`` over the volume.

Foreground variant (suffix ``_fg``): ``mask = gt > lo + fraction * (max - lo)`` with ``lo = min(0, gt.min())``
(``fraction`` default 0.05, i.e. 5 % of the maximum for MR), then ``scipy.ndimage.binary_dilation`` by
``dilation`` voxels (default 2) within each slice, so edges of the anatomy count. On the mask: PSNR from the
masked MSE with the same ``data_range``, NMSE over masked voxels, SSIM as the mean of scikit-image's full
SSIM map over masked pixels (the map is computed on whole slices, then pooled over the mask).

Through-plane consistency (``slice_gradient_error``): ``||D_K pred - D_K gt||_2 / ||D_K gt||_2`` with ``D_K``
the forward difference along the volume's slice axis (array axis 2, ``K``, whatever plane SSIM uses): the
relative error of the intensity gradient across slices, 0 for a perfect reconstruction, about 1 for one that
gets none of the through-plane structure (e.g. a constant along K). Methods that work slice by slice, or
interpolate between thick slices, show their through-plane steps and blur here; NaN for a single slice.

Missing ground truth (``valid``): voxels whose source value was NaN (``medrecon.io.finite``) have no ground
truth; they are left out of every metric. The volume's metrics are then the masked ones over the valid
voxels (``data_range`` from the valid voxels, SSIM pooled over them), and the foreground mask is restricted
to them too. Where an SSIM window reaches past the valid voxels the reconstruction is taken to equal the
ground truth there, so nothing outside the valid voxels changes a score. Volumes without missing voxels are
scored exactly as above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

METRIC_NAMES: tuple[str, ...] = (
    "psnr",
    "ssim",
    "nmse",
    "psnr_fg",
    "ssim_fg",
    "nmse_fg",
    "slice_gradient_error",
)


@dataclass(frozen=True)
class VolumeMetrics:
    """Metrics of one reconstructed volume (PSNR in dB, SSIM in [-1, 1], NMSE >= 0; ``*_fg`` on the mask;
    ``slice_gradient_error`` >= 0, NaN when not computed)."""

    psnr: float
    ssim: float
    nmse: float
    psnr_fg: float
    ssim_fg: float
    nmse_fg: float
    slice_gradient_error: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _check(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from reconstruction shape {pred.shape}")
    if gt.ndim != 3:
        raise ValueError(f"metrics take a stack of 2D slices (3 axes), got shape {gt.shape}")
    return gt, pred


def volume_data_range(gt: np.ndarray) -> float:
    """fastMRI's data range: ``gt.max()``; ``gt.max() - gt.min()`` when the volume has negative values."""
    gt = np.asarray(gt)
    hi, lo = float(gt.max()), float(gt.min())
    rng = hi - lo if lo < 0 else hi
    if rng <= 0:
        raise ValueError(
            f"ground truth has no positive data range (min {lo}, max {hi}); metrics are undefined"
        )
    return rng


def ssim_window(plane: tuple[int, ...]) -> int | None:
    """scikit-image's default 7, or the largest odd window that fits a smaller slice; ``None`` below 3."""
    side = min(int(n) for n in plane)
    win = min(7, side if side % 2 else side - 1)
    return win if win >= 3 else None


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ``||gt - pred||^2 / ||gt||^2`` over the whole volume."""
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    return float(np.sum((gt - pred) ** 2) / np.sum(gt**2))


def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB over the volume with ``data_range`` (default :func:`volume_data_range` of ``gt``)."""
    rng = volume_data_range(gt) if data_range is None else data_range
    return float(
        peak_signal_noise_ratio(np.asarray(gt, np.float64), np.asarray(pred, np.float64), data_range=rng)
    )


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None, slice_axis: int = 0) -> float:
    """Mean over 2D slices (along ``slice_axis``) of scikit-image's SSIM with the volume's data range."""
    gt, pred = _check(gt, pred)
    rng = volume_data_range(gt) if data_range is None else data_range
    gt, pred = np.moveaxis(gt, slice_axis, 0), np.moveaxis(pred, slice_axis, 0)
    win = ssim_window(gt.shape[1:])
    if win is None:
        return float("nan")
    values = [structural_similarity(g, p, data_range=rng, win_size=win) for g, p in zip(gt, pred)]
    return float(np.mean(values))


def slice_gradient_error(
    gt: np.ndarray, pred: np.ndarray, axis: int = 2, valid: np.ndarray | None = None
) -> float:
    """``||D pred - D gt|| / ||D gt||`` with ``D`` the forward difference along ``axis`` (see the module
    docstring); differences that touch a voxel outside ``valid`` are left out. NaN with fewer than two slices
    along ``axis``, no valid difference, or a ground truth constant along it."""
    gt, pred = _check(gt, pred)
    if gt.shape[axis] < 2:
        return float("nan")
    d_gt, d_pred = np.diff(gt, axis=axis), np.diff(pred, axis=axis)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        keep = np.take(valid, range(1, valid.shape[axis]), axis=axis) & np.take(
            valid, range(valid.shape[axis] - 1), axis=axis
        )
        d_gt, d_pred = d_gt[keep], d_pred[keep]
    reference = float(np.sum(d_gt**2))
    if d_gt.size == 0 or reference == 0:
        return float("nan")
    return float(np.sqrt(np.sum((d_pred - d_gt) ** 2) / reference))


def foreground_mask(
    gt: np.ndarray, fraction: float = 0.05, dilation: int = 2, slice_axis: int = 0
) -> np.ndarray:
    """Boolean anatomy mask: ``gt > lo + fraction * (max - lo)``, ``lo = min(0, min)``, dilated in-plane.

    Args:
        gt: ground-truth volume, shape ``(S, H, W)`` with slices along ``slice_axis``.
        fraction: threshold as a fraction of the data range, in [0, 1).
        dilation: in-plane dilation in voxels (0 for none).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"foreground fraction must be in [0, 1), got {fraction}")
    if dilation < 0:
        raise ValueError(f"foreground dilation must be >= 0 voxels, got {dilation}")
    gt = np.asarray(gt, np.float64)
    lo = min(0.0, float(gt.min()))
    mask = gt > lo + fraction * (float(gt.max()) - lo)
    if dilation:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)  # in-plane 4-connectivity only
        structure = np.moveaxis(structure, 0, slice_axis)
        mask = ndimage.binary_dilation(mask, structure=structure, iterations=dilation)
    return mask


def masked_metrics(
    gt: np.ndarray, pred: np.ndarray, mask: np.ndarray, data_range: float | None = None, slice_axis: int = 0
) -> tuple[float, float, float]:
    """(PSNR, SSIM, NMSE) restricted to ``mask`` (see the module docstring); NaN for an empty mask."""
    gt, pred = _check(gt, pred)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != gt.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the volume shape {gt.shape}")
    if not mask.any():
        return float("nan"), float("nan"), float("nan")
    rng = volume_data_range(gt) if data_range is None else data_range
    diff = gt[mask] - pred[mask]
    mse = float(np.mean(diff**2))
    psnr_fg = float("inf") if mse == 0 else float(10 * np.log10(rng**2 / mse))
    nmse_fg = float(np.sum(diff**2) / np.sum(gt[mask] ** 2))
    g, p, m = (np.moveaxis(a, slice_axis, 0) for a in (gt, pred, mask))
    win = ssim_window(g.shape[1:])
    if win is None:
        return psnr_fg, float("nan"), nmse_fg
    ssim_sum, count = 0.0, 0
    for gs, ps, ms in zip(g, p, m):
        if ms.any():
            _, ssim_map = structural_similarity(gs, ps, data_range=rng, full=True, win_size=win)
            ssim_sum += float(ssim_map[ms].sum())
            count += int(ms.sum())
    return psnr_fg, ssim_sum / count, nmse_fg


def volume_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    slice_axis: int = 0,
    fg_fraction: float = 0.05,
    fg_dilation: int = 2,
    valid: np.ndarray | None = None,
    gradient_axis: int = 2,
) -> VolumeMetrics:
    """All metrics of one volume: whole-volume PSNR/SSIM/NMSE, their foreground-masked variants and the
    through-plane gradient error along ``gradient_axis`` (the slice axis ``K`` of an ``(I, J, K)`` box).

    Args:
        gt, pred: volumes of the same 3D shape in intensity units, 2D slices along ``slice_axis``; finite
            (missing ground truth filled in, e.g. with the background value, and marked in ``valid``).
        fg_fraction, fg_dilation: foreground mask parameters (see :func:`foreground_mask`).
        valid: boolean mask of the voxels that have a ground truth, or ``None`` for all (see the module
            docstring).

    Raises:
        ValueError: shapes differ, no valid voxel, or no positive data range.
    """
    gt, pred = _check(gt, pred)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != gt.shape:
            raise ValueError(f"valid mask shape {valid.shape} differs from the volume shape {gt.shape}")
        if not valid.any():
            raise ValueError("no voxel of the evaluated region has a finite ground truth")
        if valid.all():
            valid = None
    rng = volume_data_range(gt if valid is None else gt[valid])
    mask = foreground_mask(gt, fg_fraction, fg_dilation, slice_axis)
    if valid is not None:
        mask &= valid
        pred = np.where(valid, pred, gt)  # no error where there is no ground truth (SSIM windows)
        psnr_all, ssim_all, nmse_all = masked_metrics(gt, pred, valid, rng, slice_axis)
    else:
        psnr_all, ssim_all, nmse_all = psnr(gt, pred, rng), ssim(gt, pred, rng, slice_axis), nmse(gt, pred)
    psnr_fg, ssim_fg, nmse_fg = masked_metrics(gt, pred, mask, rng, slice_axis)
    return VolumeMetrics(
        psnr=psnr_all,
        ssim=ssim_all,
        nmse=nmse_all,
        psnr_fg=psnr_fg,
        ssim_fg=ssim_fg,
        nmse_fg=nmse_fg,
        slice_gradient_error=slice_gradient_error(gt, pred, gradient_axis, valid),
    )
