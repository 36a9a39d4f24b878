"""Reconstruction methods with one calling convention, so the batching engine treats them alike.

``method(meas, cond, seeds) -> (mean, std | None)``: ``meas`` holds ``B`` units (encoded intensities, on the
method's device), ``cond`` the precomputed 2.5D condition ``(B, C, *S)`` or ``None``, ``seeds`` one integer
per unit. ``mean`` is the reconstruction ``(B, 1, *S)`` on the task's output grid; ``std`` the posterior
standard deviation (diffusion with ``samples > 1``) or ``None``.

- :class:`DiffusionMethod`: ``posterior_sample`` with the configured sampler and guidance, one generator per
  unit built from its seed on every call (a retried batch draws the same numbers). A distilled checkpoint
  (``medrecon distill``) samples on the grid it was distilled for instead (:func:`distilled_sampler`).
- :class:`RegressionMethod`: a regression checkpoint (``objective=regression``, the supervised baseline):
  one network evaluation plus the guidance (deterministic; seeds unused).
- :class:`LatentMethod`: a latent checkpoint (``objective=latent``): posterior sampling in the latent space of
  its frozen autoencoder, guidance on decoded images, decoded (and projected) output; windows of the trained
  latent size over larger volumes (``medrecon.latent``). Same outputs and seeds as :class:`DiffusionMethod`.
- :class:`BaselineMethod`: ``medrecon.baselines.get_baseline(name)`` (deterministic; seeds unused).

:func:`model_method` picks the estimator a checkpoint was trained for (reconstruct and evaluate share it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from medrecon.device import cuda_memory_format
from medrecon.physics.base import Measurement, Task
from medrecon.recon.measure import generators

log = logging.getLogger(__name__)

DIFFUSION = "diffusion"
#: The name a regression checkpoint's method runs under (logs, ``run.jsonl``, DICOM series descriptions).
REGRESSION = "regression"


class BaselineMethod:
    """A classical baseline (``input``, ``bicubic``, ``zero_filled``, ``tv``, ``nlm``) for ``task``.

    Raises:
        ValueError: unknown name, or a baseline that does not apply to the task (naming those it applies to).
    """

    def __init__(self, name: str, task: Task) -> None:
        from medrecon.baselines import get_baseline
        from medrecon.baselines.applies import check_applies

        self.fn = get_baseline(name)
        check_applies(name, task)
        self.name, self.task = name, task
        self.samples = 1

    def __call__(self, meas: Measurement, cond: Tensor | None, seeds: Sequence[int]) -> tuple[Tensor, None]:
        with torch.no_grad():
            return self.fn(self.task, meas).float(), None


class DiffusionMethod:
    """Posterior sampling with a trained model.

    Args:
        precond: the checkpoint's ``EDMPrecond`` (eval mode, on ``device``).
        task: the checkpoint's task.
        sampler: a ``SamplerConfig``.
        guidance: a ``GuidanceConfig`` (or ``None``).
        samples: K >= 1 posterior samples per unit (mean = reconstruction, std = uncertainty).
        precision: ``"fp32"`` or ``"bf16"`` (the network under bf16 autocast; ``medrecon.device``). On CUDA
            the network is also moved to channels_last (channels_last_3d for 3D), as in training.
        compile: compile the network with ``torch.compile`` (TorchInductor: fused normalisation and
            activation kernels). The first batch of each new shape pays the compilation (37 s for ``unet_small`` on
            an H200); worth it for long runs on a GPU with slices of one size.
        start: a baseline's name (``tv``): the ``mmse`` refinement starts from that method's reconstruction
            instead of the model's one-evaluation estimate (:func:`resolve_start` turns ``sampler.start`` into
            it); ``None``: the model's own estimate.
    """

    name = DIFFUSION

    def __init__(
        self,
        precond: Any,
        task: Task,
        sampler: Any,
        guidance: Any,
        samples: int = 1,
        precision: str = "fp32",
        compile: bool = False,
        start: str | None = None,
    ) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if getattr(precond, "distilled", None) is not None:  # a distilled model samples on its own grid
            sampler = distilled_sampler(precond.distilled, sampler, samples)
            start = None
        self.precond, self.task, self.sampler, self.guidance = precond, task, sampler, guidance
        self.samples, self.precision = samples, precision
        self.start = start
        self.start_method = None if start is None else BaselineMethod(start, task)
        if start is not None:
            log.info("the mmse refinement starts from %s (sampler.start)", start)
        if samples > 1 and getattr(sampler, "name", None) == "mmse" and not getattr(sampler, "renoise", 0):
            log.warning(
                "samples=%d with sampler=mmse and renoise=0: the draws differ only through the noise of the "
                "first evaluation, so their std is no uncertainty map; set sampler.renoise=1 (posterior draws "
                "from the refinement level) or use a chain sampler (sampler=dpmpp)",
                samples,
            )
        layout = cuda_memory_format(
            getattr(precond.net, "spatial_dims", 2), next(precond.parameters()).device
        )
        if layout is not None:
            precond.to(memory_format=layout)
        if compile:
            precond.net.compile()  # in place: parameter names (and the loaded weights) are unchanged

    def __call__(
        self,
        meas: Measurement,
        cond: Tensor | None,
        seeds: Sequence[int],
        start: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``start``: the start method's reconstruction of ``meas`` when the caller already has it (the blend
        computes the same TV); otherwise it is computed here when the method has a ``start``."""
        precond = self.precond if self.precision == "fp32" else _Autocast(self.precond, self.precision)
        if self.start_method is None:
            start = None
        elif start is None:
            start, _ = self.start_method(meas, None, seeds)
        result = self._posterior(precond, meas, cond, generators(seeds), start)
        return result.mean.float(), (result.std.float() if self.samples > 1 else None)

    def _posterior(
        self, precond: Any, meas: Measurement, cond: Tensor | None, gens: Any, start: Tensor | None = None
    ) -> Any:
        """The posterior mean/std record (``.mean``, ``.std``) of ``meas`` with one generator per unit."""
        from medrecon.diffusion.posterior import posterior_sample

        return posterior_sample(
            precond,
            self.task,
            meas,
            self.sampler,
            self.guidance,
            samples=self.samples,
            generators=gens,
            cond=cond,
            start=start,
        )


#: ``sampler.start=auto``: the classical reconstruction the ``mmse`` refinement starts from, per task family.
#: MRI: TV (2D); chosen on the validation sets (docs/results.md): starting from TV raised the template's
#: validation slab from 27.43 to 27.97 dB and the unlike validation scans from 27.87 to 28.03 (blended, mri_r4),
#: while for sr4x it lost 1.4 dB on the template (its model's own estimate is good: ``loss.mmse_fraction``) and
#: for denoising a start from NLM lost 1.8-2.1 dB there.
AUTO_START = {"kspace": "tv"}


def resolve_start(sampler: Any, task: Task, objective: str = DIFFUSION) -> str | None:
    """The baseline the ``mmse`` refinement starts from (``sampler.start``), or ``None`` (the model's estimate).

    ``model``: ``None``. ``auto``: :data:`AUTO_START` for 2D MRI with ``mmse`` and ``steps >= 2``, ``None``
    for every other task, sampler or objective (a latent or regression model). A baseline's name: that
    baseline, which must apply to the task.

    Raises:
        ValueError: an unknown baseline, one that does not apply to the task, or a start for another objective.
    """
    from medrecon.recon.blend import split_kind

    name = getattr(sampler, "start", "model")
    if name == "model":
        return None
    if name == "auto":
        if objective != DIFFUSION or getattr(sampler, "name", None) != "mmse" or sampler.steps < 2:
            return None
        if getattr(task, "spatial_dims", 2) != 2:
            return None
        return AUTO_START.get(split_kind(task) or "")
    if objective != DIFFUSION:
        raise ValueError(f"sampler.start={name} applies to diffusion models, not objective={objective}")
    BaselineMethod(name, task)  # validates: a known baseline that applies to the task
    return str(name)


def distilled_sampler(record: Any, sampler: Any, samples: int) -> Any:
    """The sampler of a distilled checkpoint (``medrecon distill``): the ``mmse`` rule on the grid it was
    distilled for (``record``, a ``DistillRecord``), deterministic for one sample and with renoised draws
    (``renoise=1``) for ``samples > 1``. ``sampler`` (the configured one) is not used: the student's denoiser
    is trained at its grid's noise levels only. Said once on the log."""
    chosen = record.sampler_for(samples)
    given = getattr(sampler, "name", None)
    log.info(
        "distilled checkpoint: %d network evaluation(s) per sample on its grid %s (%s)%s",
        chosen.steps,
        "[" + ", ".join(f"{s:.4g}" for s in chosen.grid) + "]",
        "renoised posterior draws" if chosen.renoise else "deterministic",
        f"; sampler={given} not used" if given and given != chosen.name else "",
    )
    if samples > 1 and chosen.steps == 1:
        log.warning(
            "samples=%d with a one-step distilled model: its draws differ only through the starting noise, so "
            "their std is no uncertainty map; distil to 2 or more steps for posterior draws",
            samples,
        )
    return chosen


class RegressionMethod(DiffusionMethod):
    """A regression checkpoint's reconstruction: one evaluation of its network (``medrecon.diffusion.
    regression.regression_estimate``), then the guidance (``none`` or ``dc``). Deterministic: ``std`` is
    ``None`` and seeds are unused.

    Args:
        precond, task, precision, compile: as for :class:`DiffusionMethod`.
        guidance: a ``GuidanceConfig`` (``none`` or ``dc``) or ``None``.

    Raises:
        ValueError: ``guidance=dps`` (see ``medrecon.diffusion.regression.regression_guidance``).
    """

    name = REGRESSION

    def __init__(
        self, precond: Any, task: Task, guidance: Any, precision: str = "fp32", compile: bool = False
    ) -> None:
        from medrecon.diffusion.regression import REGRESSION_GUIDANCE

        if guidance is not None and guidance.name not in REGRESSION_GUIDANCE:
            raise ValueError(
                f"guidance={guidance.name} does not apply to a regression model; use one of "
                f"{', '.join(REGRESSION_GUIDANCE)}"
            )
        super().__init__(precond, task, None, guidance, samples=1, precision=precision, compile=compile)

    def __call__(self, meas: Measurement, cond: Tensor | None, seeds: Sequence[int]) -> tuple[Tensor, None]:
        from medrecon.diffusion.regression import regression_estimate

        precond = self.precond if self.precision == "fp32" else _Autocast(self.precond, self.precision)
        return regression_estimate(precond, self.task, meas, self.guidance, cond=cond).float(), None


def model_method(
    loaded: Any,
    task: Task,
    sampler: Any,
    guidance: Any,
    *,
    samples: int = 1,
    precision: str = "fp32",
    compile: bool = False,
    blend: str = "none",
    log: Any = None,
    label: str = "checkpoint",
) -> Any:
    """The method a loaded checkpoint reconstructs with: :class:`DiffusionMethod` for a diffusion model,
    :class:`RegressionMethod` for a regression model (``loaded.spec.objective``).

    For a regression model the sampler is not used, ``samples > 1`` becomes 1 (a deterministic estimate has
    no spread) and ``guidance=dps`` becomes ``none``; each is said on ``log`` (a ``logging.Logger``).

    A latent model (``objective=latent``) gets :class:`LatentMethod`; an autoencoder (stage 1 of a latent
    model) reconstructs nothing and is refused.

    ``blend`` (``auto``, ``none``, ``tv``, ``nlm``) wraps the method in ``medrecon.recon.blend.BlendMethod``
    where its task allows it: ``auto`` blends 2D single-slice models of MRI (with TV) and denoising (with NLM), and
    leaves every other model alone.

    Raises:
        ValueError: an option the method refuses (samples < 1, unknown precision), or an autoencoder.
    """
    method = _model_method(loaded, task, sampler, guidance, samples, precision, compile, log, label)
    partner = _blend_partner(blend, loaded, task)
    if partner is None:
        return method
    from medrecon.recon.blend import BlendMethod, describe

    if log is not None:
        log.info("%s", describe(partner, task))
    return BlendMethod(method, partner, task)


def _blend_partner(blend: str, loaded: Any, task: Task) -> str | None:
    """The classical partner of ``blend`` for this model, or ``None`` (``auto`` skips the models blending
    does not handle: 2.5D, 3D MRI, latent). Raises ValueError for an explicit partner it cannot honour."""
    from medrecon.recon.blend import blend_partner, split_kind

    partner = blend_partner(blend, task)
    if partner is None:
        return None
    unsupported = None
    if getattr(loaded, "context", 0):
        unsupported = "a 2.5D model (data.context > 0)"
    elif loaded.spec.objective == "latent":
        unsupported = "a latent model"
    elif split_kind(task) == "kspace" and task.spatial_dims != 2:
        unsupported = "3D MRI"
    if unsupported is None:
        return partner
    if blend == "auto":
        return None
    raise ValueError(f"blend={blend} does not handle {unsupported}; use blend=none")


def _model_method(
    loaded: Any,
    task: Task,
    sampler: Any,
    guidance: Any,
    samples: int,
    precision: str,
    compile: bool,
    log: Any,
    label: str,
) -> DiffusionMethod:
    """:func:`model_method` without the blend."""
    objective = loaded.spec.objective
    if objective == "autoencoder":
        raise ValueError(
            f"{label} is an autoencoder (objective=autoencoder, stage 1 of a latent model): it reconstructs "
            "nothing by itself; train the latent model on it (medrecon train objective=latent "
            "autoencoder=FILE ...) and reconstruct with that checkpoint"
        )
    if objective == "latent":
        resolve_start(sampler, task, objective)  # refuses an explicit start (auto: the model's estimate)
        return LatentMethod(
            loaded.precond,
            loaded.codec,
            task,
            sampler,
            guidance,
            samples=samples,
            precision=precision,
            compile=compile,
            tile=latent_tile(loaded),
        )
    if objective != REGRESSION:
        return DiffusionMethod(
            loaded.precond,
            task,
            sampler,
            guidance,
            samples=samples,
            precision=precision,
            compile=compile,
            start=resolve_start(sampler, task),
        )
    from medrecon.diffusion.regression import regression_guidance

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    guidance, note = regression_guidance(guidance)
    if log is not None:
        log.info(
            "%s is a regression model (objective=regression): one network evaluation per unit, guidance %s%s",
            label,
            getattr(guidance, "name", "none"),
            "" if sampler is None else f"; sampler={getattr(sampler, 'name', sampler)} not used",
        )
        if samples > 1:
            log.warning("samples=%d ignored: a regression model is deterministic (no std); using 1", samples)
        if note:
            log.warning("%s", note)
    return RegressionMethod(loaded.precond, task, guidance, precision=precision, compile=compile)


def latent_tile(loaded: Any) -> tuple[int, ...] | None:
    """The latent window of a latent checkpoint: its training patch (``data.patch_size``) on the latent grid;
    ``None`` when the stored config does not say."""
    from omegaconf import OmegaConf

    from medrecon.data.transforms import patch_shape

    size = OmegaConf.select(loaded.config, "data.patch_size", default=None)
    if size is None:
        return None
    if not isinstance(size, int):
        size = [int(s) for s in size]
    try:
        patch = patch_shape(size, loaded.spatial_dims)
    except ValueError:
        return None
    return loaded.codec.latent_size(patch)


class LatentMethod(DiffusionMethod):
    """Posterior sampling with a latent checkpoint (``medrecon.latent.posterior.latent_posterior``).

    Args:
        precond: the latent ``EDMPrecond`` (eval mode, on the device).
        codec: the checkpoint's frozen autoencoder (``LoadedModel.codec``).
        task, sampler, samples, precision, compile: as for :class:`DiffusionMethod` (precision applies to the
            denoiser; the autoencoder runs in float32).
        guidance: ``dc`` projects the decoded output onto the measurement; ``dps`` also follows the
            measurement residual's gradient through the decoder at every step; ``none`` leaves both out
            (``medrecon.latent.posterior.guidance_plan``: measured, docs/training.md "Latent diffusion").
        tile: the trained latent patch: the denoiser runs larger volumes in overlapping windows of it; ``None``:
            whole volumes. The autoencoder uses its own window (``codec.tile``: its training patch, recorded in
            the checkpoint; docs/training.md "Latent diffusion" measured why).
    """

    def __init__(
        self,
        precond: Any,
        codec: Any,
        task: Task,
        sampler: Any,
        guidance: Any,
        samples: int = 1,
        precision: str = "fp32",
        compile: bool = False,
        tile: Sequence[int] | None = None,
    ) -> None:
        super().__init__(precond, task, sampler, guidance, samples, precision, compile)
        self.tile = None if tile is None else tuple(int(t) for t in tile)
        self.codec = codec

    def _posterior(
        self, precond: Any, meas: Measurement, cond: Tensor | None, gens: Any, start: Tensor | None = None
    ) -> Any:
        """Latent sampling, decoded (the condition is encoded from ``meas``; ``cond`` is unused; a latent model
        has no ``start``, :func:`resolve_start`)."""
        from medrecon.latent.posterior import latent_posterior

        return latent_posterior(
            precond,
            self.codec,
            self.task,
            meas,
            self.sampler,
            self.guidance,
            samples=self.samples,
            generators=gens,
            tile=self.tile,
        )


class _Autocast:
    """``precond`` whose calls run under the network autocast of ``precision``; attributes pass through.

    Only the denoiser's forward is autocast: the sampler's arithmetic and the task's data consistency (which
    may use convolutions or matrix products) stay in float32. ``EDMPrecond`` returns float32.
    """

    def __init__(self, precond: Any, precision: str) -> None:
        self._precond, self._precision = precond, precision
        self._device = next(precond.parameters()).device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._precond, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        from medrecon.device import network_autocast

        with network_autocast(self._precision, self._device):
            return self._precond(*args, **kwargs)
