"""The fastMRI evaluation protocol: score a reconstruction against a fastMRI file's own target.

This is how facebookresearch/fastMRI ``fastmri/evaluate.py`` scores a volume, so numbers are comparable with
published ones (for the same files, masks and method):

- target = the file's ``reconstruction_rss`` (multi-coil) or ``reconstruction_esc`` (single-coil)
  ``(slices, h, w)``; the reconstruction ``(slices, h', w')`` (fastMRI's ``reconstruction`` dataset);
- both are centre-cropped to ``(w, w)`` with ``w`` the *target's width* (fastMRI crops to
  ``(target.shape[-1], target.shape[-1])``, a no-op for its 320 x 320 targets; a target narrower in height
  than in width cannot be cropped so, and fastMRI's script refuses it too);
- PSNR = ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=gt.max())`` over the cropped volume;
- SSIM = mean over slices of ``skimage.metrics.structural_similarity(gt[s], pred[s], data_range=gt.max())``
  (scikit-image defaults: 7 x 7 uniform window, sample covariance), ``gt.max()`` of the whole cropped volume;
- NMSE = ``||gt - pred||^2 / ||gt||^2`` over the cropped volume.

Arrays are scored in the dtype they come in (float32 from fastMRI files), as fastMRI's script does; NMSE and
PSNR accumulate in float64 (``medrecon.evaluate.metrics``). What differs from medrecon's own protocol
(``medrecon.evaluate.metrics`` on ground truth degraded by the task): the measurement is the file's measured
k-space, the reference is the file's stored target (not the volume medrecon degraded), the crop above, no
shrinking SSIM window for tiny slices, and no foreground (``*_fg``) variants (reported as NaN / ``null``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from medrecon.evaluate.metrics import VolumeMetrics, nmse, psnr
from medrecon.io.fastmri_out import center_crop

#: The label of rows scored this way (``report.json`` ``protocol``); medrecon's own is ``SIMULATED``.
FASTMRI = "fastmri"
SIMULATED = "simulated"


@dataclass(frozen=True)
class FastMRIScores:
    """One volume's scores under the fastMRI protocol (PSNR in dB, SSIM in [-1, 1], NMSE >= 0)."""

    psnr: float
    ssim: float
    nmse: float

    def as_volume_metrics(self) -> VolumeMetrics:
        """As a report row's metrics; the foreground variants are not part of the protocol (NaN)."""
        nan = float("nan")
        return VolumeMetrics(self.psnr, self.ssim, self.nmse, psnr_fg=nan, ssim_fg=nan, nmse_fg=nan)


def evaluation_crop(target: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both volumes ``(slices, h, w)`` centre-cropped to ``(w, w)``, ``w = target.shape[-1]``.

    Raises:
        ValueError: not two 3D volumes with the same number of slices, or either too small for the crop.
    """
    if target.ndim != 3 or recon.ndim != 3:
        raise ValueError(
            f"the fastMRI protocol scores (slices, h, w) volumes, got {target.shape} and {recon.shape}"
        )
    if target.shape[0] != recon.shape[0]:
        raise ValueError(f"the target has {target.shape[0]} slices, the reconstruction {recon.shape[0]}")
    side = int(target.shape[-1])
    return center_crop(target, (side, side)), center_crop(recon, (side, side))


def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float | np.floating) -> float:
    """Mean over slices (axis 0) of scikit-image's SSIM with one ``data_range`` for the volume."""
    values = [structural_similarity(g, p, data_range=data_range) for g, p in zip(gt, pred)]
    return float(np.mean(values))


def score_volume(target: np.ndarray, recon: np.ndarray) -> FastMRIScores:
    """Crop (:func:`evaluation_crop`) and score one volume (see the module docstring).

    Raises:
        ValueError: shapes that do not fit, a non-finite value, or a target without a positive maximum.
    """
    gt, pred = evaluation_crop(np.asarray(target), np.asarray(recon))
    if gt.shape != pred.shape:
        raise ValueError(f"cropped target {gt.shape} and reconstruction {pred.shape} differ")
    if not (np.isfinite(gt).all() and np.isfinite(pred).all()):
        raise ValueError("the target or the reconstruction holds NaN or infinite values")
    peak = gt.max()  # in gt's dtype, as fastMRI passes it to scikit-image
    if not peak > 0:
        raise ValueError(f"the target's maximum is {peak}; the fastMRI metrics need a positive one")
    return FastMRIScores(psnr=psnr(gt, pred, float(peak)), ssim=ssim(gt, pred, peak), nmse=nmse(gt, pred))
