"""``medrecon reconstruct``: reconstruct every scan of a folder, file or manifest, resumably, item by item.

``medrecon reconstruct input=DIR|FILE|MANIFEST out=DIR checkpoint=FILE [method=diffusion|<baseline>]
[task=TASK] [sampler=NAME sampler.steps=N] [guidance=dc|dps|none] [samples=K] [device=...] [batch_size=N]
[seed=S]`` (see docs/usage.md and conf/reconstruct.yaml).

The input volume *is* the measurement: it is encoded with the checkpoint's encoder fitted on it, cut into
units (2D slices along ``axis``, or the volume for 3D models), and every unit is reconstructed on the task's
output grid (``medrecon.recon.measure``). Units of many items share batches (``medrecon.recon.engine``). Per
item: ``out/<id>.nii.gz`` (scanner units, output-grid affine from ``medrecon.recon.geometry``),
``out/<id>_std.nii.gz`` (``samples > 1``), ``out/dicom/<id>/`` for DICOM inputs, ``out/fastmri/<file name>``
for fastMRI k-space inputs (``fastmri_output``, ``medrecon.recon.outputs``), and a line in
``out/run.jsonl`` (``medrecon.recon.ledger``). Exit codes: 0 every item ok or skipped, 3 some failed, 2 usage
errors. The set-up (options, checkpoint, task, sampler, guidance, method) is ``medrecon.recon.setup``'s, shared
with evaluate and the Python API; items become engine jobs in ``medrecon.recon.jobs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from medrecon.errors import UsageError
from medrecon.recon.jobs import ItemContext, decode_result, prepare_job
from medrecon.recon.setup import Setup, container, output_dir, scrub

log = logging.getLogger("medrecon.reconstruct")

EXIT_OK, EXIT_PARTIAL = 0, 3
#: Items read ahead while the current one computes (``medrecon.recon.prefetch``).
PREFETCH_DEPTH = 1
#: Threads writing finished volumes while the next batches compute (``medrecon.recon.engine``).
WRITE_THREADS = 1


# ------------------------------------------------------------------------------------------------ setup
def settings_key(
    cfg: DictConfig,
    method_name: str,
    task: Any,
    precision: str = "fp32",
    blend: str | None = None,
    start: str | None = None,
) -> str:
    """A short hash of everything that changes the result: a finished item is redone when it differs.
    ``precision`` is the resolved network precision (``fp32`` or ``bf16``). The checkpoint enters by its
    content (``checkpoint_digest``: the weight set in use, spec and encoder), not its name or size, so a
    file overwritten with other weights redoes every item; computed once per run. A regression checkpoint
    (``method_name`` ``regression``) has no sampler or samples; its guidance and precision count. ``blend``:
    the classical method a model's output is blended with (``medrecon.recon.blend``), ``None`` for none.
    ``start``: the classical method the ``mmse`` refinement starts from (``sampler.start`` resolved by
    ``medrecon.recon.methods.resolve_start``), ``None`` for the model's own estimate: the key holds what was
    resolved, not ``sampler.start`` itself, so ``auto`` and its value give the same key."""
    from medrecon.checkpoint import checkpoint_digest

    ckpt = cfg.get("checkpoint")
    ckpt_id = None
    if ckpt:
        ckpt_id = checkpoint_digest(str(ckpt), str(cfg.get("weights") or "ema"))
    parts = {
        "method": method_name,
        "task": getattr(task, "name", None),
        "checkpoint": ckpt_id,
        "weights": cfg.get("weights"),
        "sampler": _sampler_key(cfg.get("sampler")) if method_name == "diffusion" else None,
        "guidance": container(cfg.get("guidance")) if method_name in ("diffusion", "regression") else None,
        "samples": int(cfg.samples) if method_name == "diffusion" else 1,
        "precision": precision if method_name in ("diffusion", "regression") else None,
        "seed": int(cfg.seed),
        "axis": cfg.get("axis"),
        "dicom": bool(cfg.get("dicom", True)),
        "dicom_identity": str(cfg.get("dicom_identity", "source")),
        "encoder": None if ckpt else container(cfg.get("encoder")),
    }
    if blend is not None:  # only then: runs without a blend keep their earlier settings
        parts["blend"] = blend
    if start is not None:  # likewise for a refinement that starts from a classical reconstruction
        parts["start"] = start
    if cfg.get("spacing", "native") != "native":  # only then: native runs keep their earlier settings
        parts["spacing"] = [cfg.get("spacing"), cfg.get("spacing_tolerance")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def dicom_identity(cfg: DictConfig) -> str:
    """``dicom_identity=source|empty``: the derived DICOM's patient and study attributes (copied or empty)."""
    from medrecon.io.dicom_identity import check_identity_mode

    value = cfg.get("dicom_identity", "source")
    try:
        return check_identity_mode(str(value))
    except ValueError as err:
        raise UsageError(str(err)) from err


def build_setup(cfg: DictConfig, device: torch.device) -> Setup:
    """Validate the options and load the model or baseline (``medrecon.recon.setup``; usage problems raise
    ``UsageError``)."""
    from medrecon.recon.setup import cfg_run_options, check_method_name, load_model, reconstruct_setup

    method_name = check_method_name(str(cfg.method))
    options = cfg_run_options(cfg, device)
    dicom_identity(cfg)
    loaded = None
    if cfg.get("checkpoint"):
        loaded = load_model(cfg.checkpoint, device=device, weights=str(cfg.weights))
    setup = reconstruct_setup(
        method_name,
        loaded=loaded,
        task=cfg.get("task"),
        sampler=cfg.get("sampler"),
        guidance=cfg.get("guidance"),
        options=options,
        axis=cfg.get("axis"),
        spacing={
            "spacing": cfg.get("spacing", "native"),
            "spacing_tolerance": cfg.get("spacing_tolerance", 1.5),
        },
        encoder=container(cfg.get("encoder")),
    )
    setup.settings = settings_key(
        cfg,
        setup.method_name,
        setup.task,
        options.precision,
        getattr(setup.method, "partner", None),
        getattr(setup.method, "start", None),
    )
    return setup


def _sampler_key(sampler: Any) -> Any:
    """The sampler's options for the settings key, without ``start`` (the resolved start enters separately)."""
    fields = container(sampler)
    if isinstance(fields, dict):
        fields = {k: v for k, v in fields.items() if k != "start"}
    return fields


# ------------------------------------------------------------------------------------------------ items
def write_outputs(
    job: Any, mean: torch.Tensor, std: torch.Tensor | None, setup: Setup, cfg: DictConfig, out: Path
) -> list[str]:
    """Decode and write one finished item; returns its outputs relative to ``out``.

    Raises:
        NonFiniteOutput: the reconstruction (or its standard deviation) holds NaN/inf; nothing is written.
    """
    from medrecon.io.finite import require_finite
    from medrecon.io.nifti import write_nifti
    from medrecon.recon.outputs import (
        fastmri_enabled,
        fastmri_source,
        item_outputs,
        write_dicom_atomic,
        write_fastmri_atomic,
    )
    from medrecon.volume import Volume

    ctx: ItemContext = job.context
    fastmri_from = fastmri_source(ctx.item, setup.task, fastmri_enabled(cfg))  # k-space inputs only
    paths = item_outputs(out, ctx.item.id, fastmri_from)
    array, std_array = decode_result(ctx, mean, std)
    expected = _expected_shape(ctx, setup)
    if expected is not None and tuple(array.shape) != expected:
        raise ValueError(f"the reconstruction has shape {tuple(array.shape)}, expected {expected}")
    require_finite(array, f"the {setup.method_name} reconstruction")  # NonFiniteOutput: nothing is written
    if std_array is not None:
        require_finite(std_array, "the posterior standard deviation")
    volume = Volume(array=array.astype(np.float32), affine=ctx.affine, meta=dict(ctx.meta))
    write_nifti(volume, paths.nifti)
    outputs = [paths.relative(paths.nifti)]
    if std_array is not None:
        std_volume = Volume(array=std_array.astype(np.float32), affine=ctx.affine, meta=dict(ctx.meta))
        write_nifti(std_volume, paths.std)
        outputs.append(paths.relative(paths.std))
    else:
        paths.std.unlink(missing_ok=True)  # a stale uncertainty map from an earlier run with samples > 1
    if paths.fastmri is not None and fastmri_from is not None:  # fastMRI's evaluation reads this file
        write_fastmri_atomic(volume.array, fastmri_from, paths.fastmri)
        outputs.append(paths.relative(paths.fastmri))
    if ctx.item.format == "dicom" and cfg.dicom and ctx.source is not None:
        description = f"medrecon {setup.method_name} {getattr(setup.task, 'name', '')}".strip()[:64]
        write_dicom_atomic(
            volume,
            paths.dicom,
            source=ctx.source,
            series_description=description,
            source_header=ctx.item.paths[0],  # patient and study attributes are read from it now, not kept
            identity=dicom_identity(cfg),
        )
        outputs.append(paths.relative(paths.dicom))
    return outputs


def _expected_shape(ctx: ItemContext, setup: Setup) -> tuple[int, ...] | None:
    if ctx.source is None:
        return None
    factors = setup.layout.factors(tuple(setup.task.scale))
    return tuple(int(n) * int(f) for n, f in zip(ctx.source.array.shape, factors))


# ------------------------------------------------------------------------------------------------ the run
def run(cfg: DictConfig) -> int:
    """Reconstruct ``cfg.input`` into ``cfg.out``; returns the exit code (see the module docstring)."""
    from medrecon.device import resolve_device
    from medrecon.distributed import process_device, quiet_non_main
    from medrecon.io.errors import RejectedInput
    from medrecon.io.finite import NonFiniteOutput
    from medrecon.recon import sharding
    from medrecon.recon.engine import ERROR, Engine, describe
    from medrecon.recon.inputs import resolve_inputs
    from medrecon.recon.ledger import RunLedger, RunRecord, previous_records
    from medrecon.recon.outputs import (
        check_fastmri_names,
        fastmri_enabled,
        fastmri_recorded,
        fastmri_source,
        item_outputs,
        outputs_present,
        remove_outputs,
    )
    from medrecon.recon.prefetch import prefetch

    env = sharding.env_from_environ()
    quiet_non_main(env.rank)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    device = process_device(resolve_device(cfg.device), env)
    setup = build_setup(cfg, device)
    items = resolve_inputs(str(cfg.input), cfg.get("split"))
    if not items:
        raise UsageError(f"input={cfg.input} holds no scans")
    fastmri = fastmri_enabled(cfg)
    check_fastmri_names([fastmri_source(item, setup.task, fastmri) for item in items])
    order = [item.id for item in items]
    mine = sharding.select_ids(order, env)
    created = sharding.start(env)
    ledger = RunLedger(out, env.rank, env.world_size)
    previous = previous_records(out)
    todo = [item for item in items if item.id in mine]
    log.info(
        "reconstructing %d item(s)%s with %s (task %s) on %s into %s",
        len(todo),
        f" (rank {env.rank} of {env.world_size})" if env.distributed else "",
        setup.method_name,
        getattr(setup.task, "name", "?"),
        device,
        out,
    )
    progress = _progress(todo, setup, cfg, env.rank)
    finished: list[RunRecord] = []
    recording = threading.Lock()  # outputs are written (and recorded) on the engine's writer thread

    def record(
        item: Any,
        status: str,
        reason: str | None = None,
        outputs: list[str] | None = None,
        seconds: float = 0.0,
        detail: str = "",
        nonfinite: Any = None,
        blend_weight: float | None = None,
    ) -> None:
        rec = RunRecord(
            id=item.id,
            input=[str(p) for p in item.paths],
            status=status,
            reason=reason,
            outputs=outputs or [],
            seconds=seconds,
            detail=scrub(detail),
            method=setup.method_name,
            settings=setup.settings,
            nonfinite=nonfinite,
            blend_weight=blend_weight,
        )
        with recording:
            ledger.append(rec)
            finished.append(rec)
            progress.item_done()
        if status == "failed":
            log.warning("item %s failed: %s%s", item.id, reason, f" ({rec.detail})" if rec.detail else "")
        elif blend_weight is not None:
            log.info(
                "item %s %s (%.1f s; weight of the model's output %.2f)",
                item.id,
                status,
                seconds,
                blend_weight,
            )
        else:
            log.info("item %s %s (%.1f s)", item.id, status, seconds)

    def on_done(job: Any, mean: torch.Tensor, std: torch.Tensor | None) -> None:
        ctx: ItemContext = job.context
        seconds = time.perf_counter() - ctx.started
        try:
            outputs = write_outputs(job, mean, std, setup, cfg, out)
        except NonFiniteOutput as err:
            record(ctx.item, "failed", err.reason, seconds=seconds, detail=str(err), nonfinite=ctx.nonfinite)
            return
        except BaseException:  # e.g. the DICOM series failed after the NIfTI: the engine fails the item
            # a failed item keeps no output
            remove_outputs(item_outputs(out, ctx.item.id, fastmri_source(ctx.item, setup.task, fastmri)))
            raise
        record(
            ctx.item,
            "ok",
            outputs=outputs,
            seconds=seconds,
            detail=ctx.note,
            nonfinite=ctx.nonfinite,
            blend_weight=job.blend_weight,
        )

    def on_fail(job: Any, reason: str, detail: str) -> None:
        ctx: ItemContext = job.context
        seconds = time.perf_counter() - ctx.started
        record(ctx.item, "failed", reason, seconds=seconds, detail=detail, nonfinite=ctx.nonfinite)

    engine = Engine(
        {setup.method_name: setup.method},
        device=device,
        on_done=on_done,
        on_fail=on_fail,
        on_batch=progress.units_done,
        write_threads=WRITE_THREADS,  # the next batches compute while a finished volume is written
        **setup.options.engine_options(),
    )

    def finished_before(item: Any) -> bool:  # the same work is done and its outputs are there
        before = previous.get(item.id)
        return (
            before is not None
            and before.done
            and before.settings == setup.settings
            and outputs_present(out, before.outputs)
            and fastmri_recorded(fastmri_source(item, setup.task, fastmri), before.outputs)
        )

    def load(item: Any) -> Any:
        # refuses ids (and fastMRI file names) that are not safe names before any work
        item_outputs(out, item.id, fastmri_source(item, setup.task, fastmri))
        return prepare_job(item, setup)

    interrupted = True
    try:
        pending = []
        for item in todo:
            if finished_before(item):
                record(item, "skipped", "outputs exist", outputs=previous[item.id].outputs)
                progress.units_done(_unit_count(item, setup))
            else:
                pending.append(item)
        # the next item is read while this one computes; its writing overlaps the next batches (engine)
        for loaded in prefetch(pending, load, depth=PREFETCH_DEPTH):
            item, job, err = loaded.item, loaded.value, loaded.error
            if isinstance(err, RejectedInput):
                record(item, "failed", err.reason.value, seconds=loaded.seconds, detail=err.detail)
                continue
            if err is not None:  # one unreadable item must not stop the run
                log.debug("item %s could not be prepared", item.id, exc_info=err)
                record(item, "failed", ERROR, seconds=loaded.seconds, detail=describe(err))
                continue
            engine.submit(job)
        engine.flush()
        interrupted = False
    finally:
        engine.stop()  # an interruption still waits for the volume being written: no partial outputs
        progress.close()
        if interrupted and not env.distributed:
            ledger.finalize(order)  # keep what finished before the interruption, one record per item
    sharding.barrier(env)
    merged = ledger.finalize(order)
    sharding.stop(created)
    relevant = [r for r in merged if r.id in set(order)] if env.rank == 0 else finished
    _summary(relevant, out if env.rank == 0 else None)
    return EXIT_PARTIAL if any(r.status == "failed" for r in relevant) else EXIT_OK


def _unit_count(item: Any, setup: Setup) -> int:
    shape = getattr(item, "shape", None)
    return setup.layout.count(tuple(shape)) if shape else 0


def _progress(todo: list[Any], setup: Setup, cfg: DictConfig, rank: int) -> Any:
    from medrecon.progress import Progress

    counts = [_unit_count(item, setup) if item.status == "ok" else 0 for item in todo]
    total = sum(counts) if all(getattr(i, "shape", None) for i in todo if i.status == "ok") else None
    return Progress(total, len(todo), bool(cfg.get("progress", True)) and rank == 0, desc="reconstruct")


def _summary(records: list[Any], out: Path | None) -> None:
    """Log a table of outcomes (counts per status and reason, failed ids), ids only."""
    counts = Counter(r.status for r in records)
    seconds = sum(r.seconds for r in records)
    lines = ["", f"{'status':<10}{'items':>7}", f"{'-' * 17}"]
    for status in ("ok", "skipped", "failed"):
        lines.append(f"{status:<10}{counts.get(status, 0):>7}")
    lines.append(f"{'total':<10}{len(records):>7}   ({seconds:.1f} s)")
    failed = [r for r in records if r.status == "failed"]
    if failed:
        reasons = Counter(r.reason for r in failed)
        lines += ["", "failed by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))]
        lines += [f"  {r.id}  {r.reason}" for r in failed[:50]]
        if len(failed) > 50:
            lines.append(f"  ... and {len(failed) - 50} more (see run.jsonl)")
    if out is not None:
        lines.append(f"records: {out / 'run.jsonl'}")
    log.info("reconstruct summary%s", "\n".join(lines))
