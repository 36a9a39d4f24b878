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
(``non_finite_output``) rather than being scored. Outputs: ``metrics.csv``, ``report.json``,
``report.md`` and PNG panels under ``figures/`` (``medrecon.evaluate.report`` / ``figures``). Exit codes: 0,
3 when some volumes could not be evaluated (they are listed in the report), 2 for usage errors.
"""

from __future__ import annotations

import logging
import time
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
    """Load, encode, cut and degrade one volume; returns the item and the 2.5D condition (or ``None``).

    ``spacing`` (a ``medrecon.recon.spacing.SpacingPolicy``) checks the volume's in-plane spacing and, with
    ``spacing=auto``, resamples the measurement to the training grid (the results come back with ``to_native``).

    Raises:
        RejectedInput: the volume cannot be read, or has too few slices for the model, the task's
            degradation or the slice split (``too_few_slices``); ValueError: nothing to evaluate in it.
    """
    from medrecon.io.archive import load_item
    from medrecon.io.errors import Reason, RejectedInput
    from medrecon.io.finite import fill_nan
    from medrecon.recon.measure import degrade_units, stacked_conditions, unit_seeds
    from medrecon.recon.spacing import SpacingPolicy

    volume = load_item(record, keep_nan=True)  # NaN marks voxels without ground truth: keep where they are
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
    meas_ext = degrade_units(task, x, unit_seeds(record.id, x.shape[0], seed, "degrade", start=ext_start))
    offset = axis_lo - ext_start
    rows = list(range(offset, offset + count))
    box_shape = [h - l for l, h in zip(lo, hi)]
    plan = (spacing or SpacingPolicy()).inspect(record.id, volume.affine, box_shape, layout)
    model_ext = plan.measurement(meas_ext)  # the same measurement unless spacing=auto resamples it
    cond = stacked_conditions(task, model_ext, context)
    meas = meas_ext.index(rows)
    gt_box = tuple(slice(l, h) for l, h in zip(lo, hi))
    gt = array[gt_box]
    valid = ~missing[gt_box] if replaced else None
    item = EvalItem(
        id=record.id,
        gt=np.ascontiguousarray(gt),
        encoder=fitted,
        meas=meas,
        to_volume=layout.volume,
        slice_axis=layout.axis if layout.spatial_dims == 2 else 2,
        index=index,
        start=axis_lo,
        valid=None if valid is None or valid.all() else np.ascontiguousarray(valid),
        replaced=replaced,
        spacing=plan,
        model_meas=model_ext.index(rows) if plan.resamples else None,
    )
    return item, (None if cond is None else cond[rows])


def run(cfg: DictConfig) -> int:
    """Evaluate; returns the exit code (see the module docstring)."""
    from hydra.utils import instantiate

    from medrecon.data.encoder import build_encoder
    from medrecon.device import resolve_device, resolve_precision
    from medrecon.evaluate.metrics import volume_metrics
    from medrecon.evaluate.report import (
        MetricRow,
        nonfinite_note,
        summarize,
        write_metrics_csv,
        write_report_json,
        write_report_md,
    )
    from medrecon.evaluate.selection import (
        DIFFUSION,
        MODEL_METHODS,
        SUPERVISED,
        check_supervised,
        excluded_note,
        rejected_records,
        resolve_methods,
        select_records,
        slice_rule,
    )
    from medrecon.io.errors import RejectedInput
    from medrecon.io.finite import NonFiniteOutput, require_finite
    from medrecon.recon.engine import Engine, Job, describe
    from medrecon.recon.measure import unit_seeds
    from medrecon.recon.methods import BaselineMethod, DiffusionMethod, model_method
    from medrecon.recon.run import bool_option, checkpoint_axis, output_dir, resolve_task, scrub
    from medrecon.recon.slicing import Layout
    from medrecon.recon.spacing import flagged_entry, report_note, spacing_policy

    if not Path(str(cfg.manifest)).is_file():
        raise UsageError(f"manifest={cfg.manifest} does not exist (write one with 'medrecon prepare')")
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    for name in ("batch_size", "samples", "seed"):
        value = cfg.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise UsageError(f"{name}={value!r} must be an integer >= {0 if name == 'seed' else 1}")
    precision = resolve_precision(cfg.get("precision", "auto"), device)
    loaded = None
    if cfg.get("checkpoint"):
        from medrecon.checkpoint import load_checkpoint

        loaded = load_checkpoint(str(cfg.checkpoint), device=device, weights=str(cfg.weights))
    supervised, supervised_path = None, cfg.get("supervised_checkpoint")
    supervised_label = f"supervised_checkpoint={Path(str(supervised_path)).name}"
    if loaded is not None and loaded.spec.objective == "regression":
        if supervised_path:
            raise UsageError(
                f"checkpoint={Path(str(cfg.checkpoint)).name} is a regression model: give the diffusion model "
                "as checkpoint= and the regression model as supervised_checkpoint="
            )
        log.info("checkpoint= is a regression model (objective=regression): evaluated as method supervised")
        supervised, supervised_path, loaded = loaded, str(cfg.checkpoint), None
        supervised_label = f"checkpoint={Path(supervised_path).name}"
    elif supervised_path:
        from medrecon.checkpoint import load_checkpoint

        supervised = load_checkpoint(str(supervised_path), device=device, weights=str(cfg.weights))
        check_supervised(supervised, loaded, str(supervised_path), cfg.get("axis"))
    model = loaded if loaded is not None else supervised  # task, geometry, encoder and slice split
    task = resolve_task(cfg, model)
    names, notes = resolve_methods(cfg.get("methods"), task, loaded is not None, supervised is not None)
    spatial_dims = model.spatial_dims if model is not None else int(task.spatial_dims)
    layout = Layout(spatial_dims=spatial_dims, axis=checkpoint_axis(model, cfg.get("axis")))
    rule = slice_rule(cfg, model)
    methods: dict[str, Any] = {}
    try:
        for name in names:
            if name == DIFFUSION:
                methods[name] = DiffusionMethod(
                    loaded.precond,
                    task,
                    instantiate(cfg.sampler),
                    instantiate(cfg.guidance),
                    samples=int(cfg.samples),
                    precision=precision,
                    compile=bool_option(cfg, "compile"),
                )
            elif name == SUPERVISED:  # deterministic: samples= applies to diffusion only
                methods[name] = model_method(
                    supervised,
                    task,
                    None,
                    instantiate(cfg.guidance),
                    precision=precision,
                    compile=bool_option(cfg, "compile"),
                    log=log,
                    label=supervised_label,
                )
            else:
                methods[name] = BaselineMethod(name, task)
    except ValueError as err:
        raise UsageError(str(err)) from err
    context = model.context if model is not None else 0
    spacing = spacing_policy(cfg, model, task)
    flagged: list[dict[str, Any]] = []  # volumes outside the training spacing (ids only)

    from medrecon.data.source import read_records

    manifest_records = read_records(str(cfg.manifest))
    records = select_records(manifest_records, rule)
    excluded = [
        {"id": r.id, "reason": r.reason or "rejected", "detail": scrub(r.detail)}
        for r in rejected_records(manifest_records, rule)
    ]
    if excluded:
        notes = [*notes, excluded_note(excluded)]
        log.warning("%s", notes[-1])
    if cfg.get("max_items") is not None:
        records = records[: int(cfg.max_items)]
    if not records:
        raise UsageError(f"manifest {cfg.manifest} has no ok records to evaluate ({rule.describe()})")
    log.info(
        "evaluating %s on %d volume(s) of task %s on %s", ", ".join(names), len(records), task.name, device
    )

    rows: list[MetricRow] = []
    failed: list[dict[str, str]] = []
    nan_volumes: list[dict[str, Any]] = []  # scored volumes that held NaN voxels (medrecon.io.finite)
    figures: list[str] = []
    fg = cfg.get("foreground") or {}
    fig_cfg = cfg.get("figures") or {}

    def finish(item: EvalItem) -> None:
        gt, count = item.gt, int(item.gt.shape[item.slice_axis])
        try:
            scored = [
                MetricRow(
                    item.id,
                    name,
                    count,
                    volume_metrics(
                        gt,
                        item.results[name],
                        slice_axis=item.slice_axis,
                        fg_fraction=float(fg.get("fraction", 0.05)),
                        fg_dilation=int(fg.get("dilation", 2)),
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
        if item.index < int(fig_cfg.get("volumes", 2)):
            try:
                figures.append(_figure(item, names, task, out, int(fig_cfg.get("dpi", 72))))
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
            failed.append({"id": item.id, "method": job.method, "reason": reason, "detail": scrub(detail)})
            log.warning("volume %s failed in %s: %s (%s)", item.id, job.method, reason, scrub(detail))
        for other in engine_jobs.pop(item.id, []):
            other.failed = True

    engine = Engine(methods, int(cfg.batch_size), device, on_done, on_fail)
    engine_jobs: dict[str, list[Job]] = {}
    encoder_cfg = _container(cfg.encoder)
    started = time.perf_counter()
    for record in records:
        try:
            base = model.encoder if model is not None else build_encoder(encoder_cfg, record.modality)
            item, cond = prepare_item(
                record, len(engine_jobs), rule, layout, task, base, context, int(cfg.seed), spacing
            )
        except RejectedInput as err:
            failed.append(
                {"id": record.id, "method": "", "reason": err.reason.value, "detail": scrub(err.detail)}
            )
            log.warning("volume %s skipped: %s", record.id, err.reason.value)
            continue
        except Exception as err:  # noqa: BLE001 - one bad volume must not stop the evaluation
            failed.append({"id": record.id, "method": "", "reason": "error", "detail": scrub(describe(err))})
            log.warning("volume %s skipped: %s", record.id, scrub(describe(err)))
            continue
        if item.spacing.outside:
            flagged.append(flagged_entry(item.id, item.spacing))
        seeds = unit_seeds(record.id, item.meas.y.shape[0], int(cfg.seed), "sample", start=item.start)
        item.pending = set(names)
        jobs = [
            Job(
                key=f"{record.id}/{name}",
                method=name,
                meas=item.meas if item.model_meas is None else item.model_meas,
                seeds=seeds,
                cond=cond if name in MODEL_METHODS else None,
                context=item,
            )
            for name in names
        ]
        engine_jobs[record.id] = jobs
        for job in jobs:
            if not item.failed:
                engine.submit(job)
    engine.flush()

    summary = summarize(rows, names)
    evaluated = len({r.id for r in rows})
    nonfinite = {
        "volumes": len(nan_volumes),
        "replaced_voxels": sum(v["replaced"] for v in nan_volumes),
        "excluded_voxels": sum(v["excluded"] for v in nan_volumes),
        "items": nan_volumes,
    }
    if nan_volumes:
        notes = [*notes, nonfinite_note(nonfinite)]
        log.info("%s", notes[-1])
    spacing_note = report_note(spacing, flagged, len(records))
    if spacing_note:
        notes = [*notes, spacing_note]
    config = {
        "manifest": Path(str(cfg.manifest)).name,
        "checkpoint": Path(str(cfg.checkpoint)).name if loaded is not None else None,
        "checkpoint_step": loaded.step if loaded is not None else None,
        "supervised_checkpoint": Path(str(supervised_path)).name if supervised is not None else None,
        "supervised_step": supervised.step if supervised is not None else None,
        "task_config": dict(model.spec.task) if model is not None else _container(cfg.get("task")),
        "methods": names,
        "sampler": _container(cfg.sampler) if DIFFUSION in names else None,
        "guidance": _container(cfg.guidance) if set(MODEL_METHODS) & set(names) else None,
        "samples": int(cfg.samples),
        "precision": precision if set(MODEL_METHODS) & set(names) else None,
        "device": device.type,
        "seed": int(cfg.seed),
        "axis": layout.axis,
        "spatial_dims": layout.spatial_dims,
        "selection": rule.describe(),
        "spacing": {**spacing.describe(), "outside": flagged},
        "foreground": {"fraction": float(fg.get("fraction", 0.05)), "dilation": int(fg.get("dilation", 2))},
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_metrics_csv(out / "metrics.csv", rows)
    write_report_json(
        out / "report.json",
        task=task.name,
        summary=summary,
        items=evaluated,
        config=config,
        notes=notes,
        failed=failed,
        excluded=excluded,
        nonfinite=nonfinite,
    )
    write_report_md(
        out / "report.md", task=task.name, summary=summary, items=evaluated, notes=notes, figures=figures
    )
    for name, entry in summary.items():
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
    return EXIT_PARTIAL if failed else EXIT_OK


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
