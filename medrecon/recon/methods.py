"""Reconstruction methods with one calling convention, so the batching engine treats them alike.

``method(meas, cond, seeds) -> (mean, std | None)``: ``meas`` holds ``B`` units (encoded intensities, on the
method's device), ``cond`` the precomputed 2.5D condition ``(B, C, *S)`` or ``None``, ``seeds`` one integer
per unit. ``mean`` is the reconstruction ``(B, 1, *S)`` on the task's output grid; ``std`` the posterior
standard deviation (diffusion with ``samples > 1``) or ``None``.

- :class:`DiffusionMethod`: ``posterior_sample`` with the configured sampler and guidance, one generator per
  unit built from its seed on every call (a retried batch draws the same numbers).
- :class:`RegressionMethod`: a regression checkpoint (``objective=regression``, the supervised baseline):
  one network evaluation plus the guidance (deterministic; seeds unused).
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
    ) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precond, self.task, self.sampler, self.guidance = precond, task, sampler, guidance
        self.samples, self.precision = samples, precision
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
        self, meas: Measurement, cond: Tensor | None, seeds: Sequence[int]
    ) -> tuple[Tensor, Tensor | None]:
        from medrecon.diffusion.posterior import posterior_sample

        precond = self.precond if self.precision == "fp32" else _Autocast(self.precond, self.precision)
        result = posterior_sample(
            precond,
            self.task,
            meas,
            self.sampler,
            self.guidance,
            samples=self.samples,
            generators=generators(seeds),
            cond=cond,
        )
        return result.mean.float(), (result.std.float() if self.samples > 1 else None)


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
    log: Any = None,
    label: str = "checkpoint",
) -> DiffusionMethod:
    """The method a loaded checkpoint reconstructs with: :class:`DiffusionMethod` for a diffusion model,
    :class:`RegressionMethod` for a regression model (``loaded.spec.objective``).

    For a regression model the sampler is not used, ``samples > 1`` becomes 1 (a deterministic estimate has
    no spread) and ``guidance=dps`` becomes ``none``; each is said on ``log`` (a ``logging.Logger``).

    Raises:
        ValueError: an option the method refuses (samples < 1, unknown precision).
    """
    if loaded.spec.objective != REGRESSION:
        return DiffusionMethod(
            loaded.precond, task, sampler, guidance, samples=samples, precision=precision, compile=compile
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
