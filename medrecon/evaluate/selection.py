"""What an evaluation covers: which methods, which volumes, and which slices of each.

Methods: ``methods=null`` takes the task family's default list (super-resolution and thick slices:
``input, bicubic, tv, diffusion``; MRI: ``zero_filled, tv, diffusion``; denoising: ``input, nlm, tv,
diffusion``), without ``diffusion`` when no checkpoint is given. ``supervised_checkpoint=FILE`` adds
``supervised`` (a regression model of the same task and data options, :func:`check_supervised`) before
``diffusion``, whether ``methods`` is given or not. Baselines that do not apply to the task are left out with
a note.

Volumes and slices, in order of precedence:

1. ``slices=[start, stop]``: that range (Python slice semantics) along the slice axis of every ok record in
   ``split``;
2. a slice split (``slice_split``: ``auto`` reads ``data.slice_split`` from the checkpoint's config; or a
   mapping ``{axis, val, test, gap}`` as in ``conf/data/slices2d.yaml``): every ok record of the manifest,
   restricted to the held-out slab of ``split`` along the slice split's axis — exactly the slices the model
   did not train on (``medrecon.data.regions``);
3. otherwise: every ok record whose manifest ``split`` matches, whole.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from medrecon.errors import UsageError
from medrecon.io.errors import Reason, RejectedInput

DIFFUSION = "diffusion"
SUPERVISED = "supervised"
MODEL_METHODS = (DIFFUSION, SUPERVISED)


def default_methods(task: Any) -> list[str]:
    """The task family's default methods (diffusion last)."""
    from medrecon.physics.denoise import DenoiseTask
    from medrecon.physics.mri import MRITask

    if isinstance(task, MRITask):
        return ["zero_filled", "tv", DIFFUSION]
    if isinstance(task, DenoiseTask):
        return ["input", "nlm", "tv", DIFFUSION]
    return ["input", "bicubic", "tv", DIFFUSION]


def resolve_methods(
    requested: Any, task: Any, has_checkpoint: bool, has_supervised: bool = False
) -> tuple[list[str], list[str]]:
    """The methods to run and notes about the ones left out.

    Raises:
        UsageError: an unknown method name, or ``diffusion`` (``supervised``) asked for explicitly without a
            checkpoint (supervised checkpoint).
    """
    from medrecon.baselines import BASELINES
    from medrecon.baselines.applies import APPLIES_TO, applies

    notes: list[str] = []
    if requested is None:
        names = default_methods(task)
        if not has_checkpoint:
            names.remove(DIFFUSION)
            notes.append("diffusion not evaluated: no checkpoint= given")
    else:
        if isinstance(requested, ListConfig):
            requested = OmegaConf.to_container(requested)
        names = [str(m) for m in (requested if isinstance(requested, (list, tuple)) else [requested])]
        unknown = [m for m in names if m not in MODEL_METHODS and m not in BASELINES]
        if unknown:
            raise UsageError(
                f"methods={unknown} unknown; choose from {', '.join(MODEL_METHODS)}, {', '.join(BASELINES)}"
            )
        if DIFFUSION in names and not has_checkpoint:
            raise UsageError("methods includes diffusion, which needs checkpoint=FILE")
        if SUPERVISED in names and not has_supervised:
            raise UsageError("methods includes supervised, which needs supervised_checkpoint=FILE")
    if has_supervised and SUPERVISED not in names:
        names.insert(names.index(DIFFUSION) if DIFFUSION in names else len(names), SUPERVISED)
    chosen = []
    for name in dict.fromkeys(names):
        if name not in MODEL_METHODS and not applies(name, task):
            notes.append(f"{name} skipped: it applies to {APPLIES_TO[name][1]}, not to task {task.name}")
            continue
        chosen.append(name)
    if not chosen:
        raise UsageError(f"none of the methods {names} applies to task {task.name}")
    return chosen, notes


def check_supervised(supervised: Any, loaded: Any, path: str, axis: Any = None) -> None:
    """Refuse a ``supervised_checkpoint`` that is not a regression model, or that the diffusion checkpoint's
    measurements do not fit: another task, 2D/3D geometry, 2.5D context, slice axis or intensity encoder
    (every method reconstructs the same encoded measurements).

    Args:
        supervised, loaded: the loaded supervised and diffusion checkpoints (``loaded`` may be ``None``).
        path: the supervised checkpoint's path, for the message.
        axis: ``axis=`` (when set, both models use it).

    Raises:
        UsageError: one line naming what differs.
    """
    from medrecon.recon.setup import checkpoint_axis

    name = Path(path).name
    if supervised.spec.objective != "regression":
        raise UsageError(
            f"supervised_checkpoint={name} is a {supervised.spec.objective} model; it takes a model trained "
            "with objective=regression (the diffusion model goes in checkpoint=)"
        )
    if loaded is None:
        return
    differ = [
        what
        for what, ours, theirs in (
            ("task", supervised.spec.task, loaded.spec.task),
            ("spatial_dims", supervised.spatial_dims, loaded.spatial_dims),
            ("2.5D context", supervised.context, loaded.context),
            ("slice axis", checkpoint_axis(supervised, axis), checkpoint_axis(loaded, axis)),
            ("encoder", supervised.encoder.to_dict(), loaded.encoder.to_dict()),
        )
        if ours != theirs
    ]
    if differ:
        raise UsageError(
            f"supervised_checkpoint={name} does not fit checkpoint= (it differs in {', '.join(differ)}): "
            "compare models trained with the same task and data options"
        )


@dataclass(frozen=True)
class SliceRule:
    """Which part of each volume is evaluated: an ``explicit`` slice range, or a held-out slab."""

    explicit: tuple[int | None, int | None] | None = None
    slice_split: Any = None  # medrecon.data.regions.SliceSplit
    split: str = "test"

    def box(self, shape: tuple[int, ...], axis: int, spatial_dims: int) -> tuple[slice, slice, slice] | None:
        """The index of the evaluated box of a volume of ``shape``; ``None`` when it is empty.

        Raises:
            RejectedInput: ``too_few_slices`` when the volume is too thin for the slice split's slabs.
        """
        index = [slice(None)] * 3
        if self.explicit is not None:
            if spatial_dims != 2:
                raise UsageError(
                    "slices= selects 2D slices; a 3D model evaluates whole volumes (or a slice_split)"
                )
            rng = range(shape[axis])[slice(*self.explicit)]
            if len(rng) == 0 or rng.step != 1:
                return None
            index[axis] = slice(rng.start, rng.stop)
        elif self.slice_split is not None:
            try:
                bounds = self.slice_split.bounds(int(shape[self.slice_split.axis]))[self.split]
            except ValueError as err:  # too thin to hold out slabs (a single slice, say)
                raise RejectedInput(Reason.TOO_FEW_SLICES, str(err)) from err
            if bounds[1] <= bounds[0]:
                return None
            index[self.slice_split.axis] = slice(*bounds)
        return tuple(index)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        if self.explicit is not None:
            return {"slices": list(self.explicit)}
        if self.slice_split is not None:
            s = self.slice_split
            return {
                "slice_split": {"axis": s.axis, "val": s.val, "test": s.test, "gap": s.gap, "end": s.end},
                "split": self.split,
            }
        return {"split": self.split, "slices": "all"}


def slice_rule(cfg: DictConfig, loaded: Any) -> SliceRule:
    """Build the :class:`SliceRule` from ``slices=``, ``slice_split=`` and the checkpoint's config."""
    from medrecon.data.regions import SPLITS, build_slice_split

    split = str(cfg.split)
    if split not in SPLITS:
        raise UsageError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    slices = cfg.get("slices")
    if slices is not None:
        values = list(OmegaConf.to_container(slices)) if isinstance(slices, ListConfig) else list(slices)
        if len(values) != 2 or not all(v is None or isinstance(v, int) for v in values):
            raise UsageError(f"slices={values} must be [start, stop] (integers or null)")
        return SliceRule(explicit=(values[0], values[1]), split=split)
    spec = cfg.get("slice_split", "auto")
    if spec == "auto":
        spec = (
            OmegaConf.select(loaded.config, "data.slice_split", default=None) if loaded is not None else None
        )
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    try:
        return SliceRule(slice_split=build_slice_split(spec), split=split)
    except (TypeError, ValueError) as err:
        raise UsageError(f"slice_split={spec}: {err}") from err


def select_records(records: list[Any], rule: SliceRule) -> list[Any]:
    """The ok records the rule evaluates: all of them with a slice split, else those of ``rule.split``."""
    return [r for r in _in_selection(records, rule) if r.status == "ok"]


def rejected_records(records: list[Any], rule: SliceRule) -> list[Any]:
    """The records the rule would evaluate but that prepare rejected (reported as excluded, with reasons)."""
    return [r for r in _in_selection(records, rule) if r.status != "ok"]


def excluded_note(excluded: list[dict[str, str]]) -> str:
    """One report line for the rejected records of the selection: how many, per reason code."""
    counts = Counter(e["reason"] for e in excluded)
    shown = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
    return f"{len(excluded)} record(s) excluded: rejected when the archive was prepared ({shown})"


def _in_selection(records: list[Any], rule: SliceRule) -> list[Any]:
    if rule.slice_split is not None and rule.explicit is None:
        return list(records)
    return [r for r in records if getattr(r, "split", None) == rule.split]
