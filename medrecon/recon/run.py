"""``medrecon reconstruct``: reconstruct every scan of a folder, file or manifest, resumably, item by item.

``medrecon reconstruct input=DIR|FILE|MANIFEST out=DIR checkpoint=FILE [method=diffusion|<baseline>]
[task=TASK] [sampler=NAME sampler.steps=N] [guidance=dc|dps|none] [samples=K] [device=...] [batch_size=N]
[seed=S]`` (see docs/usage.md and conf/reconstruct.yaml).

The input volume *is* the measurement: it is encoded with the checkpoint's encoder fitted on it, cut into
units (2D slices along ``axis``, or the volume for 3D models), and every unit is reconstructed on the task's
output grid (``medrecon.recon.measure``). Units of many items share batches (``medrecon.recon.engine``). Per
item: ``out/<id>.nii.gz`` (scanner units, output-grid affine from ``medrecon.recon.geometry``),
``out/<id>_std.nii.gz`` (``samples > 1``), ``out/dicom/<id>/`` for DICOM inputs, and a line in
``out/run.jsonl`` (``medrecon.recon.ledger``). Exit codes: 0 every item ok or skipped, 3 some failed, 2 usage
errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medrecon.errors import UsageError

log = logging.getLogger("medrecon.reconstruct")

EXIT_OK, EXIT_PARTIAL = 0, 3
_PATH_PATTERN = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"():,;]+)+")


def scrub(text: str) -> str:
    """``text`` with anything that looks like a file path replaced by ``<path>`` (folder names may be PHI)."""
    return _PATH_PATTERN.sub("<path>", text)


@dataclass
class ItemContext:
    """What finishing an item needs: the input, its encoder, and how to map units back to a volume."""

    item: Any
    source: Any  # the input Volume, or None (k-space)
    encoder: Any
    affine: np.ndarray
    meta: dict[str, Any]
    assemble: Any  # (N, *S) units -> (I, J, K) array
    started: float
    nonfinite: Any = None  # the input's NonFinite counts (medrecon.io.finite)
    note: str = ""  # what was done to the input (NaN voxels replaced), for the run record
    spacing: Any = None  # its SpacingPlan (medrecon.recon.spacing): flagged, resampled for the network


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def output_dir(cfg: DictConfig) -> Path:
    """Hydra's output folder for this job (``out``, or ``out/<n>`` in a multirun), else ``cfg.out``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(str(cfg.out))


# ------------------------------------------------------------------------------------------------ setup
@dataclass
class Setup:
    """Everything resolved from the config before the first item."""

    method_name: str
    method: Any
    task: Any
    encoder: Any  # the checkpoint's Encoder, or None (per-item default from cfg.encoder)
    layout: Any
    context: int
    device: torch.device
    settings: str
    spacing: Any = None  # the SpacingPolicy (medrecon.recon.spacing): spacing=native|auto, training range


def resolve_task(cfg: DictConfig, loaded: Any) -> Any:
    """The task: the checkpoint's (a given ``task=`` must name the same one), else ``task=``."""
    from medrecon.physics.registry import build_task

    given = cfg.get("task")
    if loaded is not None:
        if given is not None:
            ours = {k: v for k, v in dict(_container(given)).items() if k != "spatial_dims"}
            theirs = {k: v for k, v in dict(loaded.spec.task).items() if k != "spatial_dims"}
            if ours != theirs:
                differs = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
                raise UsageError(
                    f"task= differs from the checkpoint's task in {differs}; a checkpoint reconstructs "
                    "the task it was trained for: leave task= out"
                )
        return loaded.task
    if given is None:
        raise UsageError("a baseline method needs task=TASK (e.g. task=sr4x) when no checkpoint= is given")
    try:
        return build_task(_container(given))
    except (ValueError, TypeError) as err:
        raise UsageError(f"task=: {err}") from err


def checkpoint_axis(loaded: Any, override: Any) -> int:
    """The slice axis: ``axis=`` when set, else the checkpoint's ``data.axis`` when it is one axis, else 2."""
    if override is not None:
        if override not in (0, 1, 2):
            raise UsageError(f"axis={override!r} is not one of 0, 1, 2")
        return int(override)
    if loaded is not None:
        axis = OmegaConf.select(loaded.config, "data.axis", default=None)
        if isinstance(axis, int) and axis in (0, 1, 2):
            return axis
    return 2


def settings_key(cfg: DictConfig, method_name: str, task: Any, precision: str = "fp32") -> str:
    """A short hash of everything that changes the result: a finished item is redone when it differs.
    ``precision`` is the resolved network precision (``fp32`` or ``bf16``). The checkpoint enters by its
    content (``checkpoint_digest``: the weight set in use, spec and encoder), not its name or size, so a
    file overwritten with other weights redoes every item; computed once per run. A regression checkpoint
    (``method_name`` ``regression``) has no sampler or samples; its guidance and precision count."""
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
        "sampler": _container(cfg.get("sampler")) if method_name == "diffusion" else None,
        "guidance": _container(cfg.get("guidance")) if method_name in ("diffusion", "regression") else None,
        "samples": int(cfg.samples) if method_name == "diffusion" else 1,
        "precision": precision if method_name in ("diffusion", "regression") else None,
        "seed": int(cfg.seed),
        "axis": cfg.get("axis"),
        "dicom": bool(cfg.get("dicom", True)),
        "dicom_identity": str(cfg.get("dicom_identity", "source")),
        "encoder": None if ckpt else _container(cfg.get("encoder")),
    }
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


def bool_option(cfg: DictConfig, name: str) -> bool:
    """A boolean option (``name=true|false``); anything else is a usage error."""
    value = cfg.get(name, False)
    if not isinstance(value, bool):
        raise UsageError(f"{name}={value!r} must be true or false")
    return value


def build_setup(cfg: DictConfig, device: torch.device) -> Setup:
    """Validate the options and load the model or baseline (usage problems raise ``UsageError``)."""
    from hydra.utils import instantiate

    from medrecon.baselines import BASELINES
    from medrecon.device import resolve_precision
    from medrecon.recon.methods import DIFFUSION, REGRESSION, BaselineMethod, model_method
    from medrecon.recon.slicing import Layout
    from medrecon.recon.spacing import spacing_policy

    method_name = str(cfg.method)
    allowed = (DIFFUSION, *BASELINES)
    if method_name not in allowed:
        raise UsageError(f"method={method_name!r} is not one of {', '.join(allowed)}")
    samples = cfg.samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UsageError(f"samples={samples!r} must be an integer >= 1")
    if isinstance(cfg.batch_size, bool) or not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UsageError(f"batch_size={cfg.batch_size!r} must be an integer >= 1")
    precision = resolve_precision(cfg.get("precision", "auto"), device)
    dicom_identity(cfg)
    loaded = None
    if cfg.get("checkpoint"):
        from medrecon.checkpoint import load_checkpoint

        try:
            loaded = load_checkpoint(str(cfg.checkpoint), device=device, weights=str(cfg.weights))
        except ValueError as err:
            raise UsageError(f"checkpoint={cfg.checkpoint}: {err}") from err
    elif method_name == DIFFUSION:
        raise UsageError("method=diffusion needs checkpoint=FILE (a model from 'medrecon train')")
    task = resolve_task(cfg, loaded)
    spatial_dims = loaded.spatial_dims if loaded is not None else int(task.spatial_dims)
    layout = Layout(spatial_dims=spatial_dims, axis=checkpoint_axis(loaded, cfg.get("axis")))
    try:
        if method_name == DIFFUSION:
            sampler = instantiate(cfg.sampler)
            guidance = instantiate(cfg.guidance)
            method = model_method(  # a regression checkpoint runs its one evaluation (method "regression")
                loaded,
                task,
                sampler,
                guidance,
                samples=samples,
                precision=precision,
                compile=bool_option(cfg, "compile"),
                log=log,
            )
            method_name = method.name
        else:
            if samples > 1:
                log.warning("samples=%d is ignored: baseline %s is deterministic", samples, method_name)
            method = BaselineMethod(method_name, task)
    except ValueError as err:
        raise UsageError(str(err)) from err
    context = loaded.context if (loaded is not None and method_name in (DIFFUSION, REGRESSION)) else 0
    return Setup(
        method_name=method_name,
        method=method,
        task=task,
        encoder=loaded.encoder if loaded is not None else None,
        layout=layout,
        context=context,
        device=device,
        settings=settings_key(cfg, method_name, task, precision),
        spacing=spacing_policy(cfg, loaded, task),
    )


# ------------------------------------------------------------------------------------------------ items
def item_encoder(setup: Setup, cfg: DictConfig, modality: str | None) -> Any:
    """The unfitted encoder for an item: the checkpoint's, else ``cfg.encoder`` for the item's modality."""
    if setup.encoder is not None:
        return setup.encoder
    from medrecon.data.encoder import build_encoder

    return build_encoder(_container(cfg.encoder), modality)


def prepare_job(item: Any, setup: Setup, cfg: DictConfig) -> Any:
    """Read an item and build its job: encoded measurement units, seeds, 2.5D conditions, and the output grid.

    Raises:
        RejectedInput: the reader refuses the item, or the task cannot use it.
    """
    from medrecon.io.archive import load_item
    from medrecon.io.errors import Reason, RejectedInput
    from medrecon.io.finite import NonFinite
    from medrecon.recon.engine import Job
    from medrecon.recon.geometry import upsampled_affine
    from medrecon.recon.measure import (
        image_measurement,
        is_mri,
        kspace_measurement,
        stacked_conditions,
        unit_seeds,
    )
    from medrecon.recon.spacing import SpacingPolicy

    started = time.perf_counter()
    task, layout = setup.task, setup.layout
    spacing_policy = setup.spacing or SpacingPolicy()
    if item.status != "ok":
        raise RejectedInput(_reason(item.reason), item.detail or "rejected when the archive was scanned")
    if item.format == "h5" and is_mri(task):
        from medrecon.io.kspace_h5 import read_kspace_h5

        data = read_kspace_h5(item.paths[0])
        meas, encoder = kspace_measurement(task, data.kspace, data.mask, item_encoder(setup, cfg, "MR"))
        spacing = data.info.encoded_spacing
        col_mm, row_mm, slice_mm = (spacing[1], spacing[0], spacing[2]) if spacing else (1.0, 1.0, 1.0)
        affine = np.diag([col_mm, row_mm, slice_mm, 1.0])
        plan = spacing_policy.inspect(item.id, affine if spacing else None, None, layout)
        source, meta = None, {"modality": "MR"}
        nonfinite = NonFinite()  # read_kspace_h5 refuses non-finite k-space

        def assemble(units: np.ndarray) -> np.ndarray:  # (slices, H, W) -> (W, H, slices), like kspace_volume
            return np.ascontiguousarray(np.transpose(units, (2, 1, 0)))

    else:
        source = load_item(item)
        nonfinite = NonFinite.from_dict(source.meta["nonfinite"])
        if source.array.ndim != 3:
            raise RejectedInput(Reason.UNSUPPORTED, f"a {source.array.ndim}D array is not a single 3D volume")
        modality = source.meta.get("modality")
        encoder = item_encoder(setup, cfg, modality).for_volume(source.array)
        units = torch.from_numpy(encoder.encode(layout.units(source.array)))[:, None]
        factors = layout.factors(tuple(task.scale))
        affine = upsampled_affine(source.affine, factors)
        out_shape = tuple(int(n) * int(f) for n, f in zip(source.array.shape, factors))
        plan = spacing_policy.inspect(item.id, affine, out_shape, layout)
        meas = image_measurement(task, plan.to_model(units))  # spacing=auto: on the training grid
        meta = {"modality": modality}
        if isinstance(source.meta.get("nifti"), dict):
            meta["nifti"] = dict(source.meta["nifti"])
        assemble = layout.volume
    count = int(meas.y.shape[0])
    cond = stacked_conditions(task, meas, setup.context)
    note = ""
    if nonfinite.nan:
        note = f"{nonfinite.nan} NaN voxel(s) read as the background value {source.meta['nan_fill']:.6g}"
        log.info("item %s: %s", item.id, note)
    note = "; ".join(n for n in (note, plan.note) if n)
    context = ItemContext(item, source, encoder, affine, meta, assemble, started, nonfinite, note, plan)
    seeds = unit_seeds(item.id, count, int(cfg.seed))
    return Job(key=item.id, method=setup.method_name, meas=meas, seeds=seeds, cond=cond, context=context)


def _reason(code: str | None) -> Any:
    from medrecon.io.errors import Reason

    try:
        return Reason(code)
    except ValueError:
        return Reason.UNREADABLE


def write_outputs(
    job: Any, mean: torch.Tensor, std: torch.Tensor | None, setup: Setup, cfg: DictConfig, out: Path
) -> list[str]:
    """Decode and write one finished item; returns its outputs relative to ``out``.

    Raises:
        NonFiniteOutput: the reconstruction (or its standard deviation) holds NaN/inf; nothing is written.
    """
    from medrecon.io.finite import require_finite
    from medrecon.io.nifti import write_nifti
    from medrecon.recon.outputs import item_outputs, write_dicom_atomic
    from medrecon.volume import Volume

    ctx: ItemContext = job.context
    paths = item_outputs(out, ctx.item.id)
    encoder = ctx.encoder
    if ctx.spacing is not None:  # spacing=auto: from the training grid back to the item's output grid
        mean, std = ctx.spacing.to_native(mean), ctx.spacing.to_native(std)
    array = ctx.assemble(encoder.decode(mean[:, 0].numpy()))
    expected = _expected_shape(ctx, setup)
    if expected is not None and tuple(array.shape) != expected:
        raise ValueError(f"the reconstruction has shape {tuple(array.shape)}, expected {expected}")
    require_finite(array, f"the {setup.method_name} reconstruction")  # NonFiniteOutput: nothing is written
    if std is not None:
        require_finite(std, "the posterior standard deviation")
    volume = Volume(array=array.astype(np.float32), affine=ctx.affine, meta=dict(ctx.meta))
    write_nifti(volume, paths.nifti)
    outputs = [paths.relative(paths.nifti)]
    if std is not None:
        scale = (float(encoder.high) - float(encoder.low)) / 2.0
        std_volume = Volume(
            array=(ctx.assemble(std[:, 0].numpy()) * scale).astype(np.float32),
            affine=ctx.affine,
            meta=dict(ctx.meta),
        )
        write_nifti(std_volume, paths.std)
        outputs.append(paths.relative(paths.std))
    else:
        paths.std.unlink(missing_ok=True)  # a stale uncertainty map from an earlier run with samples > 1
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
    from medrecon.recon.outputs import item_outputs, outputs_present, remove_outputs

    env = sharding.env_from_environ()
    quiet_non_main(env.rank)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    device = process_device(resolve_device(cfg.device), env)
    setup = build_setup(cfg, device)
    items = resolve_inputs(str(cfg.input), cfg.get("split"))
    if not items:
        raise UsageError(f"input={cfg.input} holds no scans")
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

    def record(
        item: Any,
        status: str,
        reason: str | None = None,
        outputs: list[str] | None = None,
        seconds: float = 0.0,
        detail: str = "",
        nonfinite: Any = None,
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
        )
        ledger.append(rec)
        finished.append(rec)
        progress.item_done()
        if status == "failed":
            log.warning("item %s failed: %s%s", item.id, reason, f" ({rec.detail})" if rec.detail else "")
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
            remove_outputs(item_outputs(out, ctx.item.id))  # a failed item keeps no output
            raise
        record(ctx.item, "ok", outputs=outputs, seconds=seconds, detail=ctx.note, nonfinite=ctx.nonfinite)

    def on_fail(job: Any, reason: str, detail: str) -> None:
        ctx: ItemContext = job.context
        seconds = time.perf_counter() - ctx.started
        record(ctx.item, "failed", reason, seconds=seconds, detail=detail, nonfinite=ctx.nonfinite)

    engine = Engine(
        {setup.method_name: setup.method},
        int(cfg.batch_size),
        device,
        on_done,
        on_fail,
        on_batch=progress.units_done,
    )
    interrupted = True
    try:
        for item in todo:
            before = previous.get(item.id)
            if (
                before is not None
                and before.done
                and before.settings == setup.settings
                and outputs_present(out, before.outputs)
            ):
                record(item, "skipped", "outputs exist", outputs=before.outputs)
                progress.units_done(_unit_count(item, setup))
                continue
            started = time.perf_counter()
            try:
                item_outputs(out, item.id)  # refuses ids that are not safe names before any work
                job = prepare_job(item, setup, cfg)
            except RejectedInput as err:
                record(
                    item, "failed", err.reason.value, seconds=time.perf_counter() - started, detail=err.detail
                )
                continue
            except Exception as err:  # noqa: BLE001 - one unreadable item must not stop the run
                log.debug("item %s could not be prepared", item.id, exc_info=err)
                record(item, "failed", ERROR, seconds=time.perf_counter() - started, detail=describe(err))
                continue
            engine.submit(job)
        engine.flush()
        interrupted = False
    finally:
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


class _Progress:
    """A tqdm bar over units (slices) with items done in the postfix; a no-op when disabled."""

    def __init__(self, total_units: int | None, total_items: int, enabled: bool) -> None:
        self.items, self.total_items = 0, total_items
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_units, unit="slice", desc="reconstruct", dynamic_ncols=True)
            self.bar.set_postfix_str(f"items 0/{total_items}")

    def units_done(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def item_done(self) -> None:
        self.items += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"items {self.items}/{self.total_items}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(todo: list[Any], setup: Setup, cfg: DictConfig, rank: int) -> _Progress:
    counts = [_unit_count(item, setup) if item.status == "ok" else 0 for item in todo]
    total = sum(counts) if all(getattr(i, "shape", None) for i in todo if i.status == "ok") else None
    return _Progress(total, len(todo), bool(cfg.get("progress", True)) and rank == 0)


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
