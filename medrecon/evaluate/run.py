"""``medrecon evaluate``: degrade ground truth, reconstruct it with every method, score, report and draw.

``medrecon evaluate manifest=FILE.jsonl out=DIR [checkpoint=FILE] [supervised_checkpoint=FILE] [task=TASK]
[split=test] [methods=[diffusion,bicubic,...]] [slices=[a,b]] [sampler=... guidance=... samples=K]``
(docs/usage.md). ``supervised_checkpoint`` (a regression model, ``objective=regression``) adds the method
``supervised``: one network evaluation with the same guidance; a regression model given as ``checkpoint=``
is evaluated as ``supervised`` too.

Per volume (the records and slices ``medrecon.evaluate.selection`` picks): the ground truth is encoded with
the checkpoint's encoder (else ``encoder``) fitted on the whole volume, cut into units along the slice axis
(cropped at the far end to a multiple of the task's scale), and every unit is degraded with ``task.degrade``
and its own seeded generator (``medrecon.recon.measure``); every method then reconstructs the same
measurements, batched across volumes. Reconstructions are decoded to scanner units and scored against the
ground truth in scanner units (``medrecon.evaluate.metrics``). Non-finite voxels follow ``medrecon.io.finite``:
NaN voxels of a volume become its background value before it is degraded, and are left out of the scores
(they have no ground truth); the report counts both. A reconstruction that is not finite fails its volume
(``non_finite_output``) rather than being scored. Under an MRI task, fastMRI ``.h5`` files follow the fastMRI
protocol instead (their measured k-space, scored against their own targets: ``medrecon.evaluate.kspace``,
``fastmri_protocol``; ``report.json`` says which protocol). Outputs: ``metrics.csv``, ``report.json``,
``report.md`` and PNG panels under ``figures/`` (``medrecon.evaluate.report`` / ``figures``). Exit codes: 0,
3 when some volumes could not be evaluated (they are listed in the report), 2 for usage errors.

Layers: options, models, task, methods and layout are resolved by ``medrecon.recon.setup`` (shared with
reconstruct) in :func:`evaluation_setup`; :func:`evaluate_sources` runs the loop over :class:`Source` records
(manifest records, or in-memory volumes from ``medrecon.api.evaluate``) and returns the
``medrecon.evaluate.report.Report``; :func:`run` is the command around them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medrecon.errors import UsageError

log = logging.getLogger("medrecon.evaluate")

EXIT_OK, EXIT_PARTIAL = 0, 3


@dataclass
class EvalItem:
    """One volume under evaluation: ground truth and measurements, and the methods' results as they arrive."""

    id: str
    gt: np.ndarray  # (I, J, K) scanner units, the evaluated box
    encoder: Any
    meas: Any  # Measurement of the units
    to_volume: Any  # (N, *S) units -> (I, J, K)
    slice_axis: int
    index: int  # position among the evaluated items (figures for the first few)
    start: int = 0  # absolute index of the first unit along the slice axis
    valid: np.ndarray | None = None  # voxels of ``gt`` with a ground truth (not NaN in the source); None: all
    replaced: int = 0  # NaN voxels of the whole volume set to its background value before degradation
    pending: set[str] = field(default_factory=set)
    results: dict[str, np.ndarray] = field(default_factory=dict)
    stds: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: bool = False
    spacing: Any = None  # its SpacingPlan (medrecon.recon.spacing)
    model_meas: Any = None  # spacing=auto: the measurement on the training grid, what the methods see
    measured: dict[str, Any] | None = None  # fastMRI k-space: the mask's source and acceleration


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def prepare_item(
    record: Any,
    index: int,
    rule: Any,
    layout: Any,
    task: Any,
    encoder: Any,
    context: int,
    seed: int,
    spacing: Any = None,
) -> tuple[EvalItem, Any]:
    """Load a manifest record (NaN voxels kept: they have no ground truth) and :func:`prepare_volume` it."""
    from medrecon.io.archive import load_item

    volume = load_item(record, keep_nan=True)  # NaN marks voxels without ground truth: keep where they are
    return prepare_volume(volume, record.id, index, rule, layout, task, encoder, context, seed, spacing)


def prepare_volume(
    volume: Any,
    item_id: str,
    index: int,
    rule: Any,
    layout: Any,
    task: Any,
    encoder: Any,
    context: int,
    seed: int,
    spacing: Any = None,
) -> tuple[EvalItem, Any]:
    """Encode, cut and degrade one ground-truth volume; returns the item and the 2.5D condition (or ``None``).

    ``volume`` is a ``Volume`` in scanner units whose NaN voxels mark missing ground truth; ``item_id`` names
    it (every unit's degradation and sampling seed derives from it). ``spacing`` (a
    ``medrecon.recon.spacing.SpacingPolicy``) checks the volume's in-plane spacing and, with ``spacing=auto``,
    resamples the measurement to the training grid (the results come back with ``to_native``).

    Raises:
        RejectedInput: the volume has too few slices for the model, the task's degradation or the slice
            split (``too_few_slices``), or is not one 3D volume; ValueError: nothing to evaluate in it.
    """
    from medrecon.io.errors import Reason, RejectedInput
    from medrecon.io.finite import fill_nan
    from medrecon.recon.measure import degrade_units, stacked_conditions, unit_seeds
    from medrecon.recon.spacing import SpacingPolicy

    array = np.asarray(volume.array, dtype=np.float32)
    if array.ndim != 3:
        raise RejectedInput(Reason.UNSUPPORTED, f"a {array.ndim}D array is not a single 3D volume")
    layout.check(array.shape)  # too_few_slices: a single slice for a 3D model, or slices across it
    missing = np.isnan(array)
    replaced = int(missing.sum())
    array, _ = fill_nan(array)  # what every other command reads (load_item's policy)
    box = rule.box(array.shape, layout.axis, layout.spatial_dims)
    if box is None:
        raise ValueError("the slice selection leaves no slice of this volume")
    fitted = encoder.for_volume(array)
    # crop every unit's spatial axes at the far end to a multiple of the task's scale (degrade needs it)
    factors = layout.factors(tuple(task.scale))
    lo = [b.start or 0 for b in box]
    hi = [b.stop if b.stop is not None else n for b, n in zip(box, array.shape)]
    hi = [l + (h - l) // f * f for l, h, f in zip(lo, hi, factors)]
    if hi[2] <= lo[2]:  # e.g. thick_slices averages more slices than the selection has
        chosen = (box[2].stop if box[2].stop is not None else array.shape[2]) - lo[2]
        raise RejectedInput(
            Reason.TOO_FEW_SLICES,
            f"{chosen} slice(s) along axis 2; degrading them for task {task.name} takes {factors[2]}",
        )
    if any(h <= l for l, h in zip(lo, hi)):
        raise ValueError(f"the volume is smaller than the task's scale {factors}")
    axis_lo = lo[layout.axis] if layout.spatial_dims == 2 else 0
    count = hi[layout.axis] - lo[layout.axis] if layout.spatial_dims == 2 else 1
    # context: degrade k extra units on each side (inside the volume) so edge slices see real neighbours
    ext_lo, ext_hi = lo.copy(), hi.copy()
    if layout.spatial_dims == 2 and context:
        ext_lo[layout.axis] = max(0, lo[layout.axis] - context)
        ext_hi[layout.axis] = min(array.shape[layout.axis], hi[layout.axis] + context)
    ext = array[tuple(slice(l, h) for l, h in zip(ext_lo, ext_hi))]
    x = torch.from_numpy(fitted.encode(layout.units(ext)))[:, None]
    ext_start = ext_lo[layout.axis] if layout.spatial_dims == 2 else 0
    meas_ext = degrade_units(task, x, unit_seeds(item_id, x.shape[0], seed, "degrade", start=ext_start))
    offset = axis_lo - ext_start
    rows = list(range(offset, offset + count))
    box_shape = [h - l for l, h in zip(lo, hi)]
    plan = (spacing or SpacingPolicy()).inspect(item_id, volume.affine, box_shape, layout)
    model_ext = plan.measurement(meas_ext)  # the same measurement unless spacing=auto resamples it
    cond = stacked_conditions(task, model_ext, context)
    meas = meas_ext.index(rows)
    gt_box = tuple(slice(l, h) for l, h in zip(lo, hi))
    gt = array[gt_box]
    valid = ~missing[gt_box] if replaced else None
    item = EvalItem(
        id=item_id,
        gt=np.ascontiguousarray(gt),
        encoder=fitted,
        meas=meas,
        to_volume=layout.volume,
        slice_axis=layout.axis,  # 3D models: the plane SSIM and figures use (data.axis / axis=, default 2)
        index=index,
        start=axis_lo,
        valid=None if valid is None or valid.all() else np.ascontiguousarray(valid),
        replaced=replaced,
        spacing=plan,
        model_meas=model_ext.index(rows) if plan.resamples else None,
    )
    return item, (None if cond is None else cond[rows])


# ------------------------------------------------------------------------------------------------ set-up
@dataclass
class Evaluation:
    """What an evaluation resolved before the first volume (``medrecon.recon.setup``'s pieces, several
    methods).

    Attributes:
        task: the task (the models', else ``task=``).
        names: the methods, in report order; ``methods``: name -> the engine's callable.
        layout, rule, context: how volumes are cut into units, which slices are scored, 2.5D neighbours.
        spacing: the ``SpacingPolicy``.
        model: the checkpoint that fixes the task, geometry and encoder (diffusion, else supervised) or None.
        loaded, supervised: the diffusion and the supervised (regression) models, or None.
        options: the validated ``RunOptions``.
        encoder_options: the ``encoder`` options for volumes without a checkpoint.
        sampler, guidance: as data for the report (``None`` when no method uses them).
        foreground: ``(fraction, dilation)`` of the ``*_fg`` metrics' mask.
        figure_volumes, figure_dpi: PNG panels for the first volumes (written only with an output folder).
        notes: sentences for the report (methods left out).
    """

    task: Any
    names: list[str]
    methods: dict[str, Any]
    layout: Any
    rule: Any
    context: int
    spacing: Any
    model: Any
    loaded: Any
    supervised: Any
    options: Any
    encoder_options: Any = None
    sampler: Any = None
    guidance: Any = None
    foreground: tuple[float, int] = (0.05, 2)
    figure_volumes: int = 2
    figure_dpi: int = 72
    notes: list[str] = field(default_factory=list)


def pair_models(
    loaded: Any, supervised: Any, checkpoint_name: str, supervised_name: str, axis: Any = None
) -> tuple[Any, Any, str, str]:
    """The diffusion and supervised models of an evaluation: a regression model given as the checkpoint is
    evaluated as ``supervised``; a supervised model must fit the diffusion model (``check_supervised``).

    Returns:
        ``(diffusion model or None, supervised model or None, the supervised model's file name, its label)``.

    Raises:
        UsageError: a regression checkpoint together with a supervised one, or models that do not fit.
    """
    from medrecon.evaluate.selection import check_supervised

    if loaded is not None and loaded.spec.objective == "regression":
        if supervised is not None:
            raise UsageError(
                f"checkpoint={checkpoint_name} is a regression model: give the diffusion model "
                "as checkpoint= and the regression model as supervised_checkpoint="
            )
        log.info("checkpoint= is a regression model (objective=regression): evaluated as method supervised")
        return None, loaded, checkpoint_name, f"checkpoint={checkpoint_name}"
    if supervised is not None:
        check_supervised(supervised, loaded, supervised_name, axis)
    return loaded, supervised, supervised_name, f"supervised_checkpoint={supervised_name}"


def evaluation_setup(
    requested: Any,
    *,
    loaded: Any,
    supervised: Any,
    supervised_label: str,
    task: Any,
    sampler: Any,
    guidance: Any,
    options: Any,
    selection: Any,
    axis: Any = None,
    spacing: Any = None,
    encoder: Any = None,
) -> Evaluation:
    """Resolve the task, methods, layout, slice selection and spacing policy of an evaluation.

    Args:
        requested: ``methods=`` (``None``: the task family's defaults, ``medrecon.evaluate.selection``).
        loaded, supervised, supervised_label: from :func:`pair_models`.
        task, sampler, guidance: as ``medrecon.recon.setup`` takes them.
        options: the validated ``RunOptions``.
        selection: ``{"split", "slices", "slice_split"}`` (``selection.slice_rule``).
        axis, spacing, encoder: ``axis=``, ``{"spacing", "spacing_tolerance"}``, the ``encoder`` options.

    Raises:
        UsageError: any option problem, one line.
    """
    from medrecon.evaluate.selection import DIFFUSION, MODEL_METHODS, SUPERVISED, resolve_methods, slice_rule
    from medrecon.recon.setup import (
        build_method,
        guidance_config,
        resolve_task,
        sampler_config,
        unit_layout,
    )
    from medrecon.recon.spacing import spacing_policy

    model = loaded if loaded is not None else supervised  # task, geometry, encoder and slice split
    task_obj = resolve_task(task, model)
    names, notes = resolve_methods(requested, task_obj, loaded is not None, supervised is not None)
    layout = unit_layout(model, task_obj, axis)
    rule = slice_rule(selection, model)
    precision, compile = options.precision, options.compile
    methods: dict[str, Any] = {}
    for name in names:
        if name == DIFFUSION:
            methods[name] = build_method(
                name,
                task_obj,
                model=loaded,
                sampler=sampler_config(sampler),
                guidance=guidance_config(guidance),
                samples=options.samples,
                precision=precision,
                compile=compile,
                blend=options.blend,
                log=log,
            )
        elif name == SUPERVISED:  # deterministic: samples= applies to diffusion only
            methods[name] = build_method(
                name,
                task_obj,
                model=supervised,
                guidance=guidance_config(guidance),
                precision=precision,
                compile=compile,
                blend=options.blend,
                log=log,
                label=supervised_label,
            )
        else:
            methods[name] = build_method(name, task_obj)
    return Evaluation(
        task=task_obj,
        names=names,
        methods=methods,
        layout=layout,
        rule=rule,
        context=model.context if model is not None else 0,
        spacing=spacing_policy(spacing or {}, model, task_obj),
        model=model,
        loaded=loaded,
        supervised=supervised,
        options=options,
        encoder_options=encoder,
        sampler=_container(sampler) if DIFFUSION in names else None,
        guidance=_container(guidance) if set(MODEL_METHODS) & set(names) else None,
        notes=notes,
    )


# ------------------------------------------------------------------------------------------------ the loop
@dataclass(frozen=True)
class Source:
    """One ground-truth volume to evaluate: its id, modality, shape (``None``: unknown) and how to read it
    (``load() -> Volume`` in scanner units, NaN voxels kept: they have no ground truth)."""

    id: str
    modality: str | None
    shape: tuple[int, ...] | None
    load: Callable[[], Any]
    kspace: Path | None = None  # a fastMRI file: MRI tasks score it by the fastMRI protocol (evaluate.kspace)


def record_source(record: Any) -> Source:
    """A manifest record as a :class:`Source` (``load_item`` with NaN voxels kept)."""
    from medrecon.io.archive import load_item

    shape = tuple(record.shape) if getattr(record, "shape", None) else None
    kspace = Path(record.paths[0]) if getattr(record, "format", None) == "h5" else None
    return Source(record.id, record.modality, shape, lambda: load_item(record, keep_nan=True), kspace)


def evaluate_sources(
    sources: list[Source],
    ev: Evaluation,
    *,
    config: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    excluded: list[dict[str, str]] | None = None,
    out: Path | None = None,
    progress: bool = False,
) -> Any:
    """Degrade, reconstruct with every method (batched across volumes) and score every source.

    Args:
        sources: the volumes, in order (figures for the first ``ev.figure_volumes``).
        ev: the :class:`Evaluation`.
        config: the report's first config entries (what was evaluated: manifest, checkpoints, task config);
            the evaluation's own settings follow.
        notes: report notes before the evaluation's own (methods left out, excluded records).
        excluded: records of the selection that prepare rejected.
        out: where figure panels go (``None``: none are drawn).
        progress: a tqdm bar over slices (all methods) with volumes done and the ETA.

    Returns:
        The ``medrecon.evaluate.report.Report``; volumes that could not be evaluated are in its ``failed``.
    """
    from medrecon.data.encoder import build_encoder
    from medrecon.evaluate.fastmri_protocol import FASTMRI, score_volume
    from medrecon.evaluate.kspace import evaluation_protocol, kspace_note, prepare_kspace_item
    from medrecon.evaluate.metrics import volume_metrics
    from medrecon.evaluate.report import MetricRow, Report, nonfinite_note, summarize
    from medrecon.evaluate.selection import MODEL_METHODS
    from medrecon.io.errors import RejectedInput
    from medrecon.io.finite import NonFiniteOutput, require_finite
    from medrecon.progress import Progress
    from medrecon.recon.engine import Engine, Job, describe
    from medrecon.recon.measure import unit_seeds
    from medrecon.recon.setup import scrub
    from medrecon.recon.spacing import flagged_entry, report_note

    names, task, model, options = ev.names, ev.task, ev.model, ev.options
    protocol = evaluation_protocol(sources, task)  # fastmri: k-space files scored against their own targets
    measured: list[dict[str, Any]] = []  # fastmri: how each file was undersampled (ids only)
    notes = list(ev.notes if notes is None else notes)
    fraction, dilation = float(ev.foreground[0]), int(ev.foreground[1])
    rows: list[MetricRow] = []
    failed: list[dict[str, str]] = []
    nan_volumes: list[dict[str, Any]] = []  # scored volumes that held NaN voxels (medrecon.io.finite)
    flagged: list[dict[str, Any]] = []  # volumes outside the training spacing (ids only)
    figures: list[str] = []
    planned = [_planned_units(s.shape, ev) for s in sources]
    bar = Progress(
        sum(planned) if all(s.shape for s in sources) else None,
        len(sources),
        progress,
        desc="evaluate",
    )

    def finish(item: EvalItem) -> None:
        gt, count = item.gt, int(item.gt.shape[item.slice_axis])
        bar.item_done()
        try:
            scored = [
                MetricRow(
                    item.id,
                    name,
                    count,
                    score_volume(gt, item.results[name]).as_volume_metrics()
                    if protocol == FASTMRI
                    else volume_metrics(
                        gt,
                        item.results[name],
                        slice_axis=item.slice_axis,
                        fg_fraction=fraction,
                        fg_dilation=dilation,
                        valid=item.valid,
                    ),
                    item.seconds.get(name, 0.0),
                )
                for name in names
            ]
        except ValueError as err:  # e.g. an all-zero ground truth: no data range to score against
            item.failed = True
            failed.append({"id": item.id, "method": "", "reason": "unscorable", "detail": scrub(str(err))})
            log.warning("volume %s cannot be scored: %s", item.id, scrub(str(err)))
            return
        rows.extend(scored)  # all methods of a volume or none
        if item.replaced:
            no_truth = 0 if item.valid is None else int(item.valid.size - item.valid.sum())
            nan_volumes.append({"id": item.id, "replaced": item.replaced, "excluded": no_truth})
        if out is not None and item.index < ev.figure_volumes:
            try:
                figures.append(_figure(item, names, task, out, ev.figure_dpi))
            except Exception as err:  # noqa: BLE001 - a figure is not worth losing the scores for
                log.warning("figure of volume %s failed: %s", item.id, scrub(describe(err)))
        log.info("volume %s scored (%d slices)", item.id, gt.shape[item.slice_axis])

    def on_done(job: Job, mean: torch.Tensor, std: torch.Tensor | None) -> None:
        item: EvalItem = job.context
        name = job.method
        try:  # a non-finite result would score NaN: fail the volume instead, with a reason
            require_finite(mean, f"the {name} reconstruction")
            if std is not None:
                require_finite(std, f"the {name} posterior standard deviation")
        except NonFiniteOutput as err:
            on_fail(job, err.reason, str(err))
            return
        if item.spacing is not None:  # spacing=auto: back from the training grid to the ground truth's
            mean, std = item.spacing.to_native(mean), item.spacing.to_native(std)
        item.results[name] = item.to_volume(item.encoder.decode(mean[:, 0].numpy()))
        if std is not None:
            scale = (float(item.encoder.high) - float(item.encoder.low)) / 2.0
            item.stds[name] = item.to_volume(std[:, 0].numpy() * scale)
        item.seconds[name] = job.seconds
        if job.weights:  # a blended method: its per-slice weights of the model's output
            tally = blend_tally.setdefault(name, [0.0, 0])
            tally[0] += sum(job.weights.values())
            tally[1] += len(job.weights)
        if item.results[name].shape != item.gt.shape:
            raise ValueError(
                f"{name} gave shape {item.results[name].shape}, the ground truth is {item.gt.shape}"
            )
        item.pending.discard(name)
        if not item.pending:
            finish(item)
            item.results, item.stds = {}, {}

    def on_fail(job: Job, reason: str, detail: str) -> None:
        item: EvalItem = job.context
        if not item.failed:
            item.failed = True
            bar.item_done()
            failed.append({"id": item.id, "method": job.method, "reason": reason, "detail": scrub(detail)})
            log.warning("volume %s failed in %s: %s (%s)", item.id, job.method, reason, scrub(detail))
        for other in engine_jobs.pop(item.id, []):
            other.failed = True

    engine = Engine(
        ev.methods,
        device=options.device,
        on_done=on_done,
        on_fail=on_fail,
        on_batch=bar.units_done,
        **options.engine_options(),
    )
    engine_jobs: dict[str, list[Job]] = {}
    blend_tally: dict[str, list[float]] = {}  # method -> [sum of slice weights, slices]
    started = time.perf_counter()
    try:
        for source, units in zip(sources, planned):
            try:
                base = (
                    model.encoder if model is not None else build_encoder(ev.encoder_options, source.modality)
                )
                prepare = prepare_kspace_item if protocol == FASTMRI else prepare_volume
                item, cond = prepare(
                    source.kspace if protocol == FASTMRI else source.load(),
                    source.id,
                    len(engine_jobs),
                    ev.rule,
                    ev.layout,
                    task,
                    base,
                    ev.context,
                    options.seed,
                    ev.spacing,
                )
            except RejectedInput as err:
                failed.append(
                    {"id": source.id, "method": "", "reason": err.reason.value, "detail": scrub(err.detail)}
                )
                log.warning("volume %s skipped: %s", source.id, err.reason.value)
                bar.units_done(units)
                bar.item_done()
                continue
            except Exception as err:  # noqa: BLE001 - one bad volume must not stop the evaluation
                failed.append(
                    {"id": source.id, "method": "", "reason": "error", "detail": scrub(describe(err))}
                )
                log.warning("volume %s skipped: %s", source.id, scrub(describe(err)))
                bar.units_done(units)
                bar.item_done()
                continue
            if item.spacing.outside:
                flagged.append(flagged_entry(item.id, item.spacing))
            if item.measured is not None:
                measured.append({"id": item.id, **item.measured})
            seeds = unit_seeds(source.id, item.meas.y.shape[0], options.seed, "sample", start=item.start)
            item.pending = set(names)
            jobs = [
                Job(
                    key=f"{source.id}/{name}",
                    method=name,
                    meas=item.meas if item.model_meas is None else item.model_meas,
                    seeds=seeds,
                    cond=cond if name in MODEL_METHODS else None,
                    context=item,
                )
                for name in names
            ]
            engine_jobs[source.id] = jobs
            for job in jobs:
                if not item.failed:
                    engine.submit(job)
        engine.flush()
    finally:
        bar.close()

    summary = summarize(rows, names)
    nonfinite = {
        "volumes": len(nan_volumes),
        "replaced_voxels": sum(v["replaced"] for v in nan_volumes),
        "excluded_voxels": sum(v["excluded"] for v in nan_volumes),
        "items": nan_volumes,
    }
    if nan_volumes:
        notes.append(nonfinite_note(nonfinite))
        log.info("%s", notes[-1])
    spacing_note = report_note(ev.spacing, flagged, len(sources))
    if spacing_note:
        notes.append(spacing_note)
    if protocol == FASTMRI:
        notes.append(kspace_note(measured))
    settings = {
        "methods": names,
        "sampler": _sampler_used(ev),
        "guidance": ev.guidance,
        "samples": options.samples,
        "blend": blend_summary(ev.methods, blend_tally),
        "precision": options.precision if set(MODEL_METHODS) & set(names) else None,
        "device": options.device.type,
        "seed": options.seed,
        "axis": ev.layout.axis,
        "spatial_dims": ev.layout.spatial_dims,
        "selection": ev.rule.describe(),
        "spacing": {**ev.spacing.describe(), "outside": flagged},
        "foreground": {"fraction": fraction, "dilation": dilation},
        "protocol": protocol,
        **({"kspace": measured} if protocol == FASTMRI else {}),
        "seconds": round(time.perf_counter() - started, 3),
    }
    for name, blended in (settings["blend"] or {}).items():
        notes.append(
            f"{name}: blended per slice with {blended['with']} (medrecon.recon.blend), mean weight of the model's "
            f"output {blended['mean_weight']} (1 = the model alone, 0 = {blended['with']} alone)"
        )
    return Report(
        task=task.name,
        summary=summary,
        rows=rows,
        items=len({r.id for r in rows}),
        config={**(config or {}), **settings},
        notes=notes,
        failed=failed,
        excluded=list(excluded or []),
        nonfinite=nonfinite,
        figures=figures,
        protocol=protocol,
    )


def _planned_units(shape: tuple[int, ...] | None, ev: Evaluation) -> int:
    """Slices the methods will reconstruct for a volume of ``shape`` (all methods; 0 when unknown)."""
    if not shape or len(shape) != 3:
        return 0
    try:
        box = ev.rule.box(tuple(int(n) for n in shape), ev.layout.axis, ev.layout.spatial_dims)
    except Exception:  # noqa: BLE001 - only an estimate for the progress bar; preparing the volume says why
        return 0
    if box is None:
        return 0
    units = 1 if ev.layout.spatial_dims == 3 else len(range(int(shape[ev.layout.axis]))[box[ev.layout.axis]])
    return units * len(ev.names)


# ------------------------------------------------------------------------------------------------ the command
def run(cfg: DictConfig) -> int:
    """Evaluate; returns the exit code (see the module docstring)."""
    from medrecon.data.source import read_records
    from medrecon.evaluate.selection import excluded_note, rejected_records, select_records
    from medrecon.recon.setup import bool_option, cfg_run_options, load_model, output_dir, scrub

    if not Path(str(cfg.manifest)).is_file():
        raise UsageError(f"manifest={cfg.manifest} does not exist (write one with 'medrecon prepare')")
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    options = cfg_run_options(cfg)
    device, weights = options.device, str(cfg.weights)
    loaded = load_model(cfg.checkpoint, device=device, weights=weights) if cfg.get("checkpoint") else None
    supervised_path = cfg.get("supervised_checkpoint")
    supervised = None
    if supervised_path:
        supervised = load_model(
            supervised_path, device=device, weights=weights, option="supervised_checkpoint"
        )
    loaded, supervised, supervised_name, supervised_label = pair_models(
        loaded,
        supervised,
        Path(str(cfg.get("checkpoint"))).name,
        Path(str(supervised_path)).name,
        cfg.get("axis"),
    )
    fg = cfg.get("foreground") or {}
    fig_cfg = cfg.get("figures") or {}
    ev = evaluation_setup(
        cfg.get("methods"),
        loaded=loaded,
        supervised=supervised,
        supervised_label=supervised_label,
        task=cfg.get("task"),
        sampler=cfg.get("sampler"),
        guidance=cfg.get("guidance"),
        options=options,
        selection=cfg,
        axis=cfg.get("axis"),
        spacing={
            "spacing": cfg.get("spacing", "native"),
            "spacing_tolerance": cfg.get("spacing_tolerance", 1.5),
        },
        encoder=_container(cfg.get("encoder")),
    )
    ev.foreground = (float(fg.get("fraction", 0.05)), int(fg.get("dilation", 2)))
    ev.figure_volumes, ev.figure_dpi = int(fig_cfg.get("volumes", 2)), int(fig_cfg.get("dpi", 72))
    show_progress = bool_option(cfg, "progress", True)

    manifest_records = read_records(str(cfg.manifest))
    records = select_records(manifest_records, ev.rule)
    excluded = [
        {"id": r.id, "reason": r.reason or "rejected", "detail": scrub(r.detail)}
        for r in rejected_records(manifest_records, ev.rule)
    ]
    notes = list(ev.notes)
    if excluded:
        notes.append(excluded_note(excluded))
        log.warning("%s", notes[-1])
    if cfg.get("max_items") is not None:
        records = records[: int(cfg.max_items)]
    if not records:
        raise UsageError(f"manifest {cfg.manifest} has no ok records to evaluate ({ev.rule.describe()})")
    log.info(
        "evaluating %s on %d volume(s) of task %s on %s",
        ", ".join(ev.names),
        len(records),
        ev.task.name,
        device,
    )
    model = ev.model
    config = {
        "manifest": Path(str(cfg.manifest)).name,
        "checkpoint": Path(str(cfg.checkpoint)).name if loaded is not None else None,
        "checkpoint_step": loaded.step if loaded is not None else None,
        "supervised_checkpoint": supervised_name if supervised is not None else None,
        "supervised_step": supervised.step if supervised is not None else None,
        "task_config": dict(model.spec.task) if model is not None else _container(cfg.get("task")),
    }
    report = evaluate_sources(
        [record_source(r) for r in records],
        ev,
        config=config,
        notes=notes,
        excluded=excluded,
        out=out,
        progress=show_progress,
    )
    report.write(out)
    for name, entry in report.summary.items():
        log.info(
            "%-12s PSNR %.2f ± %.2f dB  SSIM %.4f ± %.4f  NMSE %.4f ± %.4f  (%d volumes)",
            name,
            entry["psnr"],
            entry["psnr_std"],
            entry["ssim"],
            entry["ssim_std"],
            entry["nmse"],
            entry["nmse_std"],
            entry["volumes"],
        )
    log.info("report: %s", out / "report.md")
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _figure(item: EvalItem, names: list[str], task: Any, out: Path, dpi: int) -> str:
    """Panels for the middle evaluated slice of ``item``; returns the PNG's path relative to ``out``."""
    from medrecon.baselines import get_baseline
    from medrecon.evaluate.figures import save_panel
    from medrecon.evaluate.selection import DIFFUSION

    axis = item.slice_axis
    mid = item.gt.shape[axis] // 2

    def plane(volume: np.ndarray) -> np.ndarray:
        return np.take(volume, mid, axis=axis)

    images: dict[str, np.ndarray] = {}
    if "input" not in names:  # show the degraded input first
        volume_unit = item.meas.y.ndim == 5  # a 3D model's unit is the whole volume
        shown = get_baseline("input")(task, item.meas.index([0 if volume_unit else mid]))
        decoded = item.encoder.decode(shown[:, 0].numpy())
        images["input"] = plane(item.to_volume(decoded)) if volume_unit else decoded[0]
    for name in names:
        images[name] = plane(item.results[name])
    reference = DIFFUSION if DIFFUSION in names else names[-1]
    uncertainty = plane(item.stds[DIFFUSION]) if DIFFUSION in item.stds else None
    rel = f"figures/{item.id}_slice{mid:03d}.png"
    save_panel(
        out / rel,
        ground_truth=plane(item.gt),
        images=images,
        error_of=reference,
        uncertainty=uncertainty,
        title=f"{item.id} · {task.name} · slice {mid}",
        dpi=dpi,
    )
    return rel


def _sampler_used(ev: Any) -> Any:
    """The sampler the diffusion method ran: the configured one (its ``start`` resolved: ``model`` or the
    baseline the refinement started from), or a distilled checkpoint's own grid."""
    from medrecon.evaluate.selection import DIFFUSION

    method = ev.methods.get(DIFFUSION) if isinstance(ev.methods, dict) else None
    used = getattr(method, "sampler", None)
    if used is not None and getattr(used, "name", None) == "distilled":
        return {"name": "distilled", "grid": list(used.grid), "renoise": used.renoise}
    if isinstance(ev.sampler, dict) and "start" in ev.sampler:  # what sampler.start resolved to
        return {**ev.sampler, "start": getattr(method, "start", None) or "model"}
    return ev.sampler


def blend_summary(methods: dict[str, Any], tally: dict[str, list[float]]) -> dict[str, Any] | None:
    """``{method: {"with": partner, "mean_weight": w}}`` for the model methods that were blended
    (``medrecon.recon.blend``; ``mean_weight`` over the slices of the scored volumes, 1 = the model's output
    alone, 0 = the partner's; ``None`` when none was scored), else None. ``tally``: method -> ``[sum of the
    slices' weights, slices]`` (from the engine's jobs)."""
    out = {}
    for name, method in methods.items():
        if getattr(method, "partner", None) is None:
            continue
        total, count = tally.get(name, (0.0, 0))
        out[name] = {"with": method.partner, "mean_weight": round(total / count, 4) if count else None}
    return out or None
