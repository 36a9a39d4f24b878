"""Progressive distillation (Salimans & Ho 2022) of a conditional EDM denoiser into a few-step sampler.

The sampler being distilled is ``sampler=mmse``'s rule on a fixed grid of noise levels ``g_0 > g_1 > ... > 0``
(:func:`medrecon.diffusion.samplers.sample_mmse`): start from ``x = g_0 n``; the first step *is* the estimate,
``x <- D(x, g_0)``; every later step is deterministic DDIM (Euler), ``x <- D + (g_{k+1} / g_k) (x - D)``. One round
of distillation trains a student (initialised from the teacher, same network) to take, on the grid ``g[::2]``,
in one step what the teacher takes in two. For student step ``j`` (from ``s = g_{2j}`` to ``s' = g_{2j+2}``) and a
state ``x`` at ``s``, the teacher's two steps give ``x''``; the student's step lands there when its output is

    D~ = (x'' - r x) / (1 - r),    r = s' / s   (r = 0 for the first step and for the step to 0: D~ = x'')

and the loss is EDM's weighted error ``lambda(s) |D_student(x, s, cond) - D~|^2``, ``lambda(s) = (s^2 +
sigma_data^2) / (s sigma_data)^2``. Rounds halve the step count until the wanted one (8 -> 4 -> 2 -> 1).

Where the states come from. Salimans & Ho draw ``x`` from the forward process ``x0 + s n``, which the
deterministic DDIM trajectory keeps (in distribution). The ``mmse`` rule does not: its first step lands on a
smooth estimate, not on ``x0 + g_1 n``. So the states are the teacher's own trajectory from ``g_0 n`` (exactly
what the student's sampler visits once it matches the teacher), computed under ``no_grad`` only as far as each
sample needs. A fraction of the samples (``renoise_fraction``) get fresh noise ``g_2 n'`` at the teacher's level
2 (the student's level 1), as ``sampler.renoise=1`` adds it: the states posterior draws (``samples > 1``) visit.

The teacher is the conditional denoiser, without measurement guidance; data consistency wraps the student at
sampling time like any denoiser (``medrecon.diffusion.guidance``). The distilled model's record
(:class:`DistillRecord`, stored in its checkpoint) says which grid its sampler runs: :class:`GridSampler`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from medrecon.diffusion.samplers import Callback, Denoiser, sample_mmse
from medrecon.diffusion.tensors import Generators, append_dims, rand, randn_like, sigma_batch
from medrecon.schema import Choice, Float, Int, SchemaError, Seq, Text, check_mapping, quote

#: The sampler rules a student can be distilled for (the ``mmse`` rule: first step = the estimate, DDIM after).
DISTILLED_SAMPLERS = ("mmse",)
METHODS = ("progressive",)
MAX_STEPS = 1024


def check_grid(sigmas: Sequence[float], where: str = "sigmas") -> tuple[float, ...]:
    """``sigmas`` as a tuple after checking that it is a sampler grid: finite, strictly decreasing, at least two
    levels, ending with 0.

    Raises:
        SchemaError: the first problem, in one line.
    """
    values = tuple(float(s) for s in sigmas)
    ok = (
        len(values) >= 2
        and all(math.isfinite(s) for s in values)
        and values[-1] == 0.0
        and all(a > b for a, b in zip(values, values[1:]))
    )
    if not ok:
        raise SchemaError(
            f"{where}={quote(list(values))} must be >= 2 strictly decreasing noise levels ending with 0"
        )
    return values


def halving_grids(grid: Sequence[float], student_steps: int) -> list[tuple[float, ...]]:
    """The students' grids of the rounds that take ``grid`` (the teacher's, ``T`` steps) to ``student_steps``:
    ``grid[::2]``, ``grid[::4]``, ... (``T / student_steps`` must be a power of two >= 2).

    Raises:
        ValueError: the step counts do not halve into each other.
    """
    grid = check_grid(grid, "teacher grid")
    teacher_steps = len(grid) - 1
    ratio = teacher_steps // student_steps if student_steps >= 1 else 0
    if student_steps < 1 or ratio < 2 or ratio * student_steps != teacher_steps or ratio & (ratio - 1):
        raise ValueError(
            f"distilling {teacher_steps} teacher steps into {student_steps} needs a power-of-two ratio >= 2 "
            f"(e.g. 8 -> 4, 2 or 1); got ratio {teacher_steps}/{student_steps}"
        )
    rounds, stride = [], 2
    while stride <= ratio:
        rounds.append(grid[::stride])
        stride *= 2
    return rounds


@dataclass(frozen=True)
class GridSampler:
    """The ``mmse`` sampler rule on an explicit grid (a distilled model's): ``len(grid) - 1`` network evaluations.

    Attributes:
        grid: noise levels, strictly decreasing, ending with 0 (``grid[0]``: where sampling starts).
        renoise: fresh noise before the refinement, as a fraction of ``grid[1]`` (1: posterior draws for
            ``samples > 1``; 0: deterministic). Has no effect on a one-step grid.
        name: ``distilled`` (what logs and reports call it).
    """

    grid: tuple[float, ...]
    renoise: float = 0.0
    name: str = "distilled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", check_grid(self.grid, "grid"))
        if not 0.0 <= self.renoise <= 1.0:
            raise ValueError(f"renoise must be in [0, 1], got {self.renoise!r}")

    @property
    def steps(self) -> int:
        """Network evaluations per sample."""
        return len(self.grid) - 1

    def sigmas(self) -> Tensor:
        """``(steps + 1,)`` float64: the grid."""
        return torch.tensor(self.grid, dtype=torch.float64)

    def run(
        self,
        denoiser: Denoiser,
        noise: Tensor,
        generator: Generators = None,
        callback: Callback | None = None,
    ) -> Tensor:
        """Sample from standard normal ``noise`` ``(B, C, *S)`` (scaled by ``grid[0]``) under ``no_grad``;
        the same calling convention as ``SamplerConfig.run``."""
        with torch.no_grad():
            x = noise.float() * self.grid[0]
            return sample_mmse(
                denoiser, x, self.grid, generator=generator, callback=callback, renoise=self.renoise
            )


_RECORD = {
    "method": Choice(METHODS),
    "sampler": Choice(DISTILLED_SAMPLERS),
    "steps": Int(1, MAX_STEPS),
    "sigmas": Seq(Float(0.0, 1e4), 2, MAX_STEPS + 1),
    "teacher_steps": Int(1, 64 * MAX_STEPS),
    "teacher": Text(max_len=64),
}


@dataclass(frozen=True)
class DistillRecord:
    """What a distilled checkpoint records about its distillation (its ``distill`` metadata field).

    Attributes:
        steps: network evaluations per sample of the student.
        sigmas: its grid, ``steps + 1`` levels ending with 0 (:class:`GridSampler`).
        teacher_steps: steps of the original teacher's grid (``steps * 2**rounds``).
        teacher: the sha256 digest of the original teacher's EMA weights (``checkpoint_digest``).
        sampler: the sampler rule distilled (``mmse``).
        method: ``progressive``.

    Raises:
        SchemaError: a value out of range, a grid that is not one, or step counts that do not halve.
    """

    steps: int
    sigmas: tuple[float, ...]
    teacher_steps: int
    teacher: str
    sampler: str = "mmse"
    method: str = "progressive"

    def __post_init__(self) -> None:
        check_mapping(asdict(self), _RECORD, "distill")
        object.__setattr__(self, "sigmas", check_grid(self.sigmas, "distill.sigmas"))
        if len(self.sigmas) != self.steps + 1:
            raise SchemaError(f"distill.sigmas has {len(self.sigmas)} levels for {self.steps} steps")
        ratio = self.teacher_steps // self.steps
        if ratio * self.steps != self.teacher_steps or ratio < 2 or ratio & (ratio - 1):
            raise SchemaError(
                f"distill.teacher_steps={self.teacher_steps} is not steps={self.steps} times a power of two"
            )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sigmas": list(self.sigmas)}

    @classmethod
    def from_dict(cls, value: Any) -> DistillRecord:
        """The record stored in a checkpoint, checked key by key (no other keys; all required)."""
        checked = check_mapping(value, _RECORD, "distill", tuple(_RECORD))
        return cls(**{**checked, "sigmas": tuple(checked["sigmas"])})

    def sampler_for(self, samples: int = 1) -> GridSampler:
        """The student's sampler: deterministic for one sample, renoised draws (``renoise=1``) for more."""
        return GridSampler(self.sigmas, renoise=1.0 if samples > 1 else 0.0)


class ProgressiveDistillLoss:
    """Per-sample loss of one round: the student's one step against the teacher's two (module docstring).

    Args:
        teacher: the round's teacher ``EDMPrecond`` (frozen, eval mode, on the training device).
        grid: the teacher's grid (``2N + 1`` levels for an ``N``-step student).
        sigma_data: the preconditioner's.
        renoise_fraction: fraction of samples whose state gets fresh noise at the student's level 1.

    Called like ``EDMLoss``: ``loss(student, x0, cond, generator) -> (B,)``; ``x0`` only fixes the shape and
    device (the measurement behind ``cond`` was made from it).
    """

    def __init__(
        self, teacher: nn.Module, grid: Sequence[float], sigma_data: float, renoise_fraction: float = 0.25
    ) -> None:
        grid = check_grid(grid, "teacher grid")
        if (len(grid) - 1) % 2:
            raise ValueError(f"the teacher grid has {len(grid) - 1} steps; an even number halves")
        if not 0.0 <= renoise_fraction <= 1.0:
            raise ValueError(f"renoise_fraction must be in [0, 1], got {renoise_fraction!r}")
        self.teacher, self.grid, self.sigma_data = teacher, grid, float(sigma_data)
        self.renoise_fraction = float(renoise_fraction)

    @property
    def student_grid(self) -> tuple[float, ...]:
        return self.grid[::2]

    def __call__(
        self, student: nn.Module, x0: Tensor, cond: Tensor | None, generator: Generators = None
    ) -> Tensor:
        b, device = x0.shape[0], x0.device
        n = (len(self.grid) - 1) // 2
        level = (rand((b,), generator, device) * n).long().clamp_(max=n - 1)  # the student's step, per sample
        x = randn_like(x0.float(), generator) * self.grid[0]
        renoised = rand((b,), generator, device) < self.renoise_fraction
        fresh = randn_like(x, generator)
        with torch.no_grad():
            start, target = self.targets(x, level, renoised, fresh, cond)
        sigmas = torch.tensor(self.student_grid, dtype=torch.float32, device=device)
        sigma = sigmas[level]
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = student(start, sigma, cond)
        return weight * (denoised.float() - target).square().flatten(1).mean(1)

    def targets(
        self, x: Tensor, level: Tensor, renoised: Tensor, fresh: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The student's input and target per sample.

        Args:
            x: ``(B, C, *S)`` starting noise at ``grid[0]``.
            level: ``(B,)`` the student step ``j`` of each sample.
            renoised: ``(B,)`` bool: the state gets ``grid[2] * fresh`` at the student's level 1.
            fresh: ``(B, C, *S)`` standard normal.
            cond: ``(B, cond_channels, *S)`` or ``None``.

        Returns:
            ``(start, target)``: the teacher-trajectory state at ``grid[2j]`` and ``D~`` (module docstring).
        """
        g = self.grid
        need = 2 * level + 2  # teacher steps each sample runs
        state, start, end = x.clone(), torch.empty_like(x), torch.empty_like(x)
        for k in range(int(need.max())):
            begins = torch.nonzero(2 * level == k).flatten()
            start[begins] = state[begins]
            rows = torch.nonzero(need > k).flatten()
            xk = state[rows]
            d = self.teacher(xk, sigma_batch(g[k], xk), None if cond is None else cond[rows])
            # the mmse rule: the first step is the estimate; the others are DDIM (Euler) steps
            nxt = d if k == 0 else d + (g[k + 1] / g[k]) * (xk - d)
            done = need[rows] == k + 1
            end[rows[done]] = nxt[done]
            if k == 1:  # the student's level 1: where sampler.renoise adds fresh noise
                scale = append_dims(renoised[rows].to(nxt.dtype), nxt.ndim) * g[2]
                nxt = nxt + scale * fresh[rows]
            state[rows] = nxt
        levels = torch.tensor(g, dtype=x.dtype, device=x.device)
        s, s_next = levels[2 * level], levels[2 * level + 2]
        r = torch.where(level == 0, torch.zeros_like(s), s_next / s)  # the first step is the estimate itself
        r = append_dims(r, x.ndim)
        return start, (end - r * start) / (1 - r)


__all__ = [
    "DISTILLED_SAMPLERS",
    "DistillRecord",
    "GridSampler",
    "ProgressiveDistillLoss",
    "check_grid",
    "halving_grids",
]
