"""Blending a model's reconstruction with a classical one, by a weight chosen from the measurement alone.

A model trained on one kind of scan can be worse than TV or NLM on a scan unlike its training data, and
nothing in its output says so. Where the measurement carries redundancy, the risk of any estimator on *this*
scan can be estimated without ground truth, and the better mix of the two reconstructions chosen per slice:

- **MRI (k-space hold-out, as in SSDU, Yaman et al. 2020).** A random ``fraction`` of the sampled
  phase-encode lines outside the fully sampled centre (with their mirror lines ``-k``, which a real image
  determines through Hermitian symmetry) is held out; both methods reconstruct from the remaining lines, and
  the weight ``w`` that best predicts the held-out lines, ``argmin_w ||M_L A(w x_m + (1 - w) x_c) - y_L||^2``,
  is a least-squares fit in closed form. The output is ``w x_m + (1 - w) x_c`` from the *full* measurement,
  projected onto it (``task.project``).
- **Denoising (Stein's unbiased risk estimate, SURE; Monte-Carlo divergence, Ramani et al. 2008).** For
  ``y = x + n``, ``n ~ N(0, sigma^2 I)``, ``||y - f(y)||^2 - N sigma^2 + 2 sigma^2 div f(y)`` is an unbiased
  estimate of ``||f(y) - x||^2``; the divergence is ``b . (f(y + eps b) - f(y)) / eps`` for one Gaussian probe
  ``b``, so each method runs twice. The risk of the mix is quadratic in ``w``; its minimiser is closed form.
  Rician noise is Gaussian of the same ``sigma`` only well above the noise floor: in the background it is
  Rayleigh-distributed, with a positive mean, and SURE would credit an estimator that keeps that bias (NLM)
  over one that removes it (measured: the template's validation slab fell from 33.3 to 31.6 dB). For Rician
  noise the risk is therefore estimated on the voxels where either reconstruction exceeds the zero level by
  ``RICIAN_FLOOR`` sigma (the whole slice when fewer than ``MIN_REGION`` voxels do), and the weight found there
  mixes the whole slice. (Keeping the model's output below that floor instead raised the template's validation
  slab from 32.4 to 34.6 dB but lost 2 dB on real scans, whose "clean" background is itself a noise floor.)

Super-resolution and thick slices have no such redundancy (the null space of the operator is invisible in
``y``): ``blend`` does not apply there. ``w`` is clipped to ``[0, 1]``; ``w = 1`` is the model's output alone.
The cost per slice: each method runs ``1 + HOLDOUT_DRAWS`` (5) times for MRI, twice for denoising.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from medrecon.physics.base import Measurement, Task, expand_to

log = logging.getLogger(__name__)

#: ``blend=`` values: ``auto`` picks the partner per task (:func:`blend_partner`).
BLEND_CHOICES = ("auto", "none", "tv", "nlm")
#: Fraction of the non-centre sampled k-space lines held out (SSDU holds out 0.4 to train a network). Chosen on
#: the template's validation slab, where 0.2, 0.35 and 0.5 scored within 0.05 dB (docs/results.md).
HOLDOUT_FRACTION = 0.35
#: Independent hold-out sets per slice, pooled: one set of a few lines is a noisy estimate on small images
#: (measured on an EPI phantom of 64 columns: weights up to 1.0 where 0 was right; two sets pooled: none above
#: 0.04). Four sets instead of two raised the unlike validation scans by 0.44 dB (diffusion) and 0.36 dB
#: (supervised) and left the template's validation slab as it was (+0.02); six added 0.05 more (docs/results.md).
#: Each costs one more run of the model and TV.
HOLDOUT_DRAWS = 4
#: Monte-Carlo SURE probe step, times the noise sigma (small enough to be linear, large enough over float32).
SURE_EPS = 0.05
#: Rician noise: SURE over the voxels above ``zero_level + RICIAN_FLOOR * sigma`` (see the module docstring).
RICIAN_FLOOR = 3.0
#: ... unless fewer voxels than this are there (a nearly empty slice): then the whole slice.
MIN_REGION = 64


def blend_partner(blend: str, task: Task) -> str | None:
    """The classical method ``blend`` mixes in for ``task`` (``None``: no blending).

    ``auto``: ``tv`` for MRI, ``nlm`` for denoising, ``None`` for every other task. ``tv``/``nlm``: that
    method, when the task allows a split (MRI or denoising) and the method applies to it.

    Raises:
        ValueError: an unknown value, or a partner for a task without a split (naming why).
    """
    from medrecon.baselines.applies import check_applies

    if blend not in BLEND_CHOICES:
        raise ValueError(f"blend={blend!r} must be one of {', '.join(BLEND_CHOICES)}")
    kind = split_kind(task)
    if blend == "none":
        return None
    if blend == "auto":
        # chosen on the template's validation slab and the unlike validation scans (docs/results.md): for
        # denoising, the NLM blend scored 32.41 / 32.03 dB there against TV's 32.33 / 31.31
        return {"kspace": "tv", "sure": "nlm"}.get(kind)
    if kind is None:
        raise ValueError(
            f"blend={blend} needs a measurement that can be split to estimate each method's error (MRI "
            f"k-space lines, or a known noise level for denoising); task {task.name} has none: use blend=none"
        )
    check_applies(blend, task)
    return blend


def split_kind(task: Task) -> str | None:
    """``kspace`` (MRI), ``sure`` (denoising with noise) or ``None`` (no split)."""
    from medrecon.physics.denoise import DenoiseTask
    from medrecon.physics.mri import MRITask

    if isinstance(task, MRITask):
        return "kspace"
    if isinstance(task, DenoiseTask) and task.sigma > 0:
        return "sure"
    return None


# ------------------------------------------------------------------------------------------------ k-space
def holdout_masks(
    mask: Tensor, fraction: float, generators: Sequence[torch.Generator]
) -> tuple[Tensor, Tensor]:
    """Split each unit's sampled lines into kept and held-out sets.

    Args:
        mask: ``(B, 1, 1, W)`` 0/1 sampling mask (2D MRI).
        fraction: probability that a sampled line outside the centre block is drawn; a drawn line takes its
            sampled mirror line with it, so a little more than this fraction is held out.
        generators: one per unit (the draw depends on the unit's seed only).

    Returns:
        ``(keep, held)``: float masks like ``mask``, disjoint, ``keep + held = mask``. The centre block (the
        contiguous sampled run around ``W // 2``) is always kept. ``held`` is all zero for a unit with nothing
        to hold out.
    """
    from medrecon.physics.fft import mirror

    candidates = holdout_candidates(mask).reshape(mask.shape[0], -1) > 0
    held = torch.zeros_like(candidates)
    for b, gen in enumerate(generators):
        draw = torch.rand(candidates.shape[1], generator=gen).to(candidates.device) < fraction
        pick = candidates[b] & draw
        pick = pick | (mirror(pick[None, None].float(), (-2, -1))[0, 0] > 0)
        held[b] = pick & candidates[b]
    held_f = held.to(mask.dtype).reshape(mask.shape)
    return mask * (1 - held_f), held_f


def holdout_candidates(mask: Tensor) -> Tensor:
    """The sampled lines outside the centre block (the contiguous sampled run around ``W // 2``; every sampled
    line when the centre is not sampled), as a 0/1 mask like ``mask`` ``(B, 1, 1, W)``. Closed under the
    mirror ``-k`` when the mask is."""
    from medrecon.physics.mri import center_block

    cols = mask.reshape(mask.shape[0], -1) > 0
    out = torch.zeros_like(cols)
    for b in range(cols.shape[0]):
        try:
            centre = center_block(cols[b].cpu()).to(cols.device)
        except ValueError:  # no centre line sampled: every line is a candidate
            centre = torch.zeros_like(cols[b])
        out[b] = cols[b] & ~centre
    return out.to(mask.dtype).reshape(mask.shape)


def kspace_weight(task: Any, meas: Measurement, held: Tensor, x_model: Tensor, x_classic: Tensor) -> Tensor:
    """``(B,)`` the weight of ``x_model`` that best predicts the held-out lines (see the module docstring),
    clipped to ``[0, 1]``; 1 where nothing was held out or both predict them equally."""
    return weight_from_terms(*kspace_terms(task, meas, held, x_model, x_classic))


def kspace_terms(
    task: Any, meas: Measurement, held: Tensor, x_model: Tensor, x_classic: Tensor
) -> tuple[Tensor, Tensor]:
    """``(num, den)``, each ``(B,)``: the normal equation of ``argmin_w ||w r_m + (1 - w) r_c||^2`` over the
    held-out lines (``r`` = predicted minus measured k-space), ``w = num / den``; terms of several folds add."""
    params = replace(meas.params, mask=held)
    y_held = meas.y * held.to(meas.y.real.dtype)
    r_m = task.forward(x_model, params) - y_held
    r_c = task.forward(x_classic, params) - y_held
    d = (r_c - r_m).flatten(1)
    rc = r_c.flatten(1)
    num = (rc.conj() * d).real.sum(1) if torch.is_complex(d) else (rc * d).sum(1)
    return num, (d.abs() ** 2).sum(1)


def weight_from_terms(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` clipped to ``[0, 1]`` (1 where ``den == 0``: both predictions equal), float32 ``(B,)``."""
    w = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))
    return w.clamp(0.0, 1.0).to(torch.float32)


# ------------------------------------------------------------------------------------------------ SURE
def sure_weight(
    y: Tensor,
    sigma: Tensor,
    x_model: Tensor,
    x_classic: Tensor,
    div_model: Tensor,
    div_classic: Tensor,
    region: Tensor | None = None,
) -> Tensor:
    """``(B,)`` the weight of ``x_model`` minimising SURE of ``w x_model + (1 - w) x_classic``, in ``[0, 1]``.

    Args:
        y: ``(B, 1, *S)`` noisy measurement.
        sigma: ``(B,)`` noise std.
        x_model, x_classic: the two reconstructions of ``y``.
        div_model, div_classic: ``(B,)`` their divergences over ``region`` (:func:`mc_divergence`).
        region: ``(B, 1, *S)`` 0/1 voxels the risk is estimated on (``None``: all).
    """
    keep = 1.0 if region is None else region.to(y.dtype)
    a = ((x_model - x_classic) * keep).flatten(1)
    r = ((y - x_classic) * keep).flatten(1)
    den = (a * a).sum(1)
    num = (r * a).sum(1) - sigma**2 * (div_model - div_classic)
    w = torch.where(den > 0, num / den.clamp_min(1e-30), torch.ones_like(den))
    return w.clamp(0.0, 1.0).to(torch.float32)


def mc_divergence(
    f_y: Tensor, f_probe: Tensor, probe: Tensor, eps: Tensor, region: Tensor | None = None
) -> Tensor:
    """``(B,)`` Monte-Carlo divergence ``b . (f(y + eps b) - f(y)) / eps`` (``eps`` ``(B,)``), summed over
    ``region`` (``(B, 1, *S)`` 0/1; ``None``: all voxels): an unbiased estimate of ``sum_i df_i / dy_i``."""
    terms = probe * (f_probe - f_y)
    if region is not None:
        terms = terms * region.to(terms.dtype)
    return terms.flatten(1).sum(1) / eps


# ------------------------------------------------------------------------------------------------ method
class BlendMethod:
    """A model method mixed with a classical one per unit (see the module docstring).

    Same calling convention as the methods of ``medrecon.recon.methods``: ``(meas, cond, seeds) ->
    (mean, std | None)``; ``std`` is the spread of the model's draws times its weight (the mix's spread), or
    ``None``. The weight chosen for each unit of the last call is kept in ``last_weights`` (``(B,)``, 1 = the
    model alone); the engine hands them to each item's job (``Job.weights``), from which reconstruct's
    ``run.jsonl`` and evaluate's report take their means.

    Args:
        model: the model's method (``DiffusionMethod``, ``RegressionMethod``).
        partner: the classical method's name (``tv``, ``nlm``).
        task: the task (MRI or denoising).
        fraction: share of the non-centre k-space lines held out (MRI).
        draws: independent hold-out sets whose fits are pooled (MRI; each costs one more run of both methods).

    Raises:
        ValueError: a task without a split, or a 2.5D model (its neighbour conditions are not split).
    """

    def __init__(
        self,
        model: Any,
        partner: str,
        task: Task,
        fraction: float = HOLDOUT_FRACTION,
        draws: int = HOLDOUT_DRAWS,
    ) -> None:
        from medrecon.recon.methods import BaselineMethod

        kind = split_kind(task)
        if kind is None:
            raise ValueError(f"blend does not apply to task {task.name}: its measurement cannot be split")
        if kind == "kspace" and task.spatial_dims != 2:
            raise ValueError("blend with a k-space hold-out handles 2D slices only")
        if not 0 < fraction < 1:
            raise ValueError(f"the hold-out fraction must be in (0, 1), got {fraction!r}")
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
        self.model, self.partner, self.task, self.kind, self.fraction = model, partner, task, kind, fraction
        self.draws = draws
        self.classic = BaselineMethod(partner, task)
        self.name = model.name
        self.samples = model.samples
        self.last_weights: Tensor | None = None

    def __getattr__(self, name: str) -> Any:  # precond, sampler, guidance, precision... of the model method
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(
        self, meas: Measurement, cond: Tensor | None, seeds: Sequence[int]
    ) -> tuple[Tensor, Tensor | None]:
        if cond is not None:
            raise ValueError("blend does not support 2.5D models (data.context > 0): use blend=none")
        x_c, _ = self.classic(meas, None, seeds)
        x_m, std = self._model(meas, seeds, x_c, cond)
        x_c = x_c.to(x_m.device)
        if self.kind == "kspace":
            w = self._kspace(meas, seeds)
        else:
            w = self._sure(meas, seeds, x_m, x_c)
        self.last_weights = w.detach().cpu()
        log.debug("blend %s: model weights %s", self.partner, [round(float(v), 3) for v in w])
        wx = expand_to(w.to(x_m.device), x_m)
        out = wx * x_m + (1 - wx) * x_c
        if self.kind == "kspace":
            out = self.task.project(out, meas)
        if std is not None:  # the spread of the mix: only the model's share varies between draws
            std = wx * std
        return out, std

    def _model(
        self, meas: Measurement, seeds: Sequence[int], x_c: Tensor, cond: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The model's reconstruction of ``meas``; a model whose refinement starts from the partner's
        reconstruction (``sampler.start``) is handed ``x_c`` instead of computing it again."""
        if getattr(self.model, "start", None) == self.partner:
            return self.model(meas, cond, seeds, start=x_c)
        return self.model(meas, cond, seeds)

    def _kspace(self, meas: Measurement, seeds: Sequence[int]) -> Tensor:
        mask = meas.params.mask
        num = den = held_any = None
        for draw in range(self.draws):  # independent hold-out sets; their normal equations add
            gens = [torch.Generator().manual_seed((int(s) ^ (0x5EED + draw)) & (2**63 - 1)) for s in seeds]
            _, held = holdout_masks(mask, self.fraction, gens)
            kept_mask = mask - held
            kept = Measurement(
                meas.y * kept_mask.to(meas.y.real.dtype), replace(meas.params, mask=kept_mask), meas.noise_std
            )
            x_c, _ = self.classic(kept, None, seeds)
            x_m, _ = self._model(kept, seeds, x_c)
            n, d = kspace_terms(self.task, meas, held, x_m, x_c.to(x_m.device))
            count = held.flatten(1).sum(1)
            num, den = (n, d) if num is None else (num + n, den + d)
            held_any = count if held_any is None else held_any + count
        w = weight_from_terms(num, den).cpu()
        return torch.where(held_any.cpu() > 0, w, torch.ones_like(w))

    def _sure(self, meas: Measurement, seeds: Sequence[int], x_m: Tensor, x_c: Tensor) -> Tensor:
        """The SURE weight per unit (over the region where SURE holds, :meth:`_region`)."""
        sigma = meas.noise_std.to(torch.float32)
        gens = [torch.Generator().manual_seed((int(s) ^ 0xB10B) & (2**63 - 1)) for s in seeds]
        probe = torch.stack([torch.randn(tuple(meas.y.shape[1:]), generator=g) for g in gens]).to(
            meas.y.device
        )
        eps = (SURE_EPS * sigma).clamp_min(1e-6)
        shifted = Measurement(meas.y + expand_to(eps, probe) * probe, meas.params, meas.noise_std)
        xc_p, _ = self.classic(shifted, None, seeds)
        xm_p, _ = self._model(shifted, seeds, xc_p)
        region = self._region(x_m, x_c, sigma)
        div_m = mc_divergence(x_m, xm_p, probe, eps, region)
        div_c = mc_divergence(x_c, xc_p.to(x_c.device), probe, eps, region)
        return sure_weight(meas.y, sigma, x_m, x_c, div_m, div_c, region)

    def _region(self, x_m: Tensor, x_c: Tensor, sigma: Tensor) -> Tensor | None:
        """Where SURE holds: every voxel for Gaussian noise; above the Rician floor otherwise (see
        ``RICIAN_FLOOR``), per unit, or the whole unit when too few voxels are."""
        if getattr(self.task, "noise", "gaussian") != "rician":
            return None
        floor = self.task.zero_level + RICIAN_FLOOR * expand_to(sigma, x_m)
        region = torch.maximum(x_m, x_c) > floor
        small = region.flatten(1).sum(1) < MIN_REGION
        region[small] = True
        return region


def describe(partner: str | None, task: Task) -> str:
    """One line for the log: what ``blend`` does for this task."""
    if partner is None:
        return "blend: none (the model's output alone)"
    if split_kind(task) == "kspace":
        how, cost = f"k-space hold-out ({HOLDOUT_DRAWS} sets)", 1 + HOLDOUT_DRAWS
    else:
        how, cost = "SURE", 2
    return f"blend: the model's output mixed with {partner} per slice, weight from a {how} ({cost}x the evaluations)"


__all__ = [
    "BLEND_CHOICES",
    "BlendMethod",
    "blend_partner",
    "describe",
    "holdout_masks",
    "kspace_weight",
    "mc_divergence",
    "split_kind",
    "sure_weight",
]
