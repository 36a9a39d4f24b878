"""The Python API: what notebooks and scripts call (docs/api.md has examples the test suite runs).

- :func:`load_model` -> :class:`Model`: a checkpoint from ``medrecon train``, or the bundled demo model;
- :func:`reconstruct` -> :class:`Reconstruction`: a degraded scan (a numpy array or torch tensor, a
  ``medrecon.volume.Volume``, or a path to one scan) reconstructed by a model or a baseline;
- :func:`evaluate` -> ``medrecon.evaluate.report.Report``: ground truth (arrays, volumes, a manifest or a
  folder) degraded by the task, reconstructed by several methods, scored (PSNR/SSIM/NMSE, fastMRI's
  convention), the report as data;
- :func:`get_task` / :func:`baseline`: the measurement operators (``forward``, ``adjoint``, ``degrade``) and the
  classical baselines, to use directly.

The commands are built from the same parts (``medrecon.recon.setup``, ``medrecon.recon.jobs``, the engine and
``medrecon.evaluate.run``), so the options mean the same (``sampler``, ``steps``, ``guidance``, ``samples``,
``seed``, ``batch_size``, ``device``, ``precision``, ``axis``, ``spacing``) and a result equals what
``medrecon reconstruct`` writes for the same scan, seed and options: every slice's noise is seeded from the seed,
the item id and the slice index, never from the batch. Problems with what was asked for raise
``medrecon.errors.UsageError`` (one line, the option named). Importing this module loads neither torch nor
matplotlib; the first call does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrecon.errors import UsageError

if TYPE_CHECKING:
    import torch

    from medrecon.evaluate.report import Report
    from medrecon.physics.base import Task
    from medrecon.volume import Volume

__all__ = [
    "Model",
    "Reconstruction",
    "baseline",
    "evaluate",
    "get_task",
    "load_model",
    "reconstruct",
]


# ------------------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class Model:
    """A loaded checkpoint, ready to reconstruct with.

    Attributes:
        path: the checkpoint file.
        loaded: the ``medrecon.checkpoint.LoadedModel`` (network, task, encoder, stored config, card).
    """

    path: Path
    loaded: Any

    @property
    def task(self) -> Task:
        """The task the model was trained for (``forward``, ``adjoint``, ``degrade``, ``name``)."""
        return self.loaded.task

    @property
    def spec(self) -> Any:
        """The model spec (``medrecon.checkpoint.ModelSpec``: network, task config, objective)."""
        return self.loaded.spec

    @property
    def objective(self) -> str:
        """``diffusion`` or ``regression`` (the supervised baseline)."""
        return str(self.loaded.spec.objective)

    @property
    def encoder(self) -> Any:
        """The intensity encoder (scanner units <-> [-1, 1], fitted per volume)."""
        return self.loaded.encoder

    @property
    def spatial_dims(self) -> int:
        """2 (slices) or 3 (volumes)."""
        return int(self.loaded.spatial_dims)

    @property
    def axis(self) -> int:
        """The slice axis it reconstructs along by default (its training ``data.axis``, else 2)."""
        from medrecon.recon.setup import checkpoint_axis

        return checkpoint_axis(self.loaded, None)

    @property
    def spacing(self) -> tuple[float, float] | None:
        """The in-plane voxel spacing range (mm) it saw in training, ``None`` when its checkpoint does not say."""
        from medrecon.card import training_plane_spacing

        return training_plane_spacing(self.loaded.card, self.loaded.config, self.spatial_dims)

    @property
    def step(self) -> int:
        """The training step of its weights."""
        return int(self.loaded.step)

    @property
    def weights(self) -> str:
        """``ema`` or ``raw``."""
        return str(self.loaded.weights)

    @property
    def card(self) -> Any:
        """The training card (data summary, best validation scores) or ``None``."""
        return self.loaded.card

    @property
    def device(self) -> torch.device:
        """Where its weights are."""
        return next(self.loaded.precond.parameters()).device

    def __repr__(self) -> str:
        return (
            f"Model(task={self.task.name!r}, objective={self.objective!r}, {self.spatial_dims}D, "
            f"step={self.step}, weights={self.weights!r}, device={str(self.device)!r}, path={self.path.name!r})"
        )


def load_model(
    checkpoint: str | Path | None = None,
    *,
    task: str | None = None,
    device: str = "auto",
    weights: str = "ema",
) -> Model:
    """Load a checkpoint (validated before any weight is read), or the bundled demo model.

    Args:
        checkpoint: a ``*.safetensors`` file from ``medrecon train``; ``None``: the bundled demo model of
            ``task`` (``medrecon.demo.demo_checkpoint``).
        task: with ``checkpoint=None``, which demo model: ``sr4x`` (default) or ``mri_r4``; with a checkpoint,
            the task name it must have (a check; ``None`` skips it).
        device: ``auto`` (the first CUDA GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        weights: ``ema`` (for sampling) or ``raw``.

    Raises:
        UsageError: no such demo model, a missing or invalid file, another task than ``task``, a bad device.
    """
    from medrecon.device import resolve_device
    from medrecon.recon.setup import load_model as load

    if checkpoint is None:
        from medrecon.demo import demo_checkpoint

        try:
            path = demo_checkpoint(task or "sr4x")
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(str(err)) from err
    else:
        path = Path(checkpoint)
    model = Model(path=Path(path), loaded=load(path, device=resolve_device(device), weights=weights))
    if task is not None and model.task.name != task:
        raise UsageError(f"checkpoint={Path(path).name} is a {model.task.name} model, not {task}")
    return model


def get_task(name: str, **overrides: Any) -> Task:
    """A task (measurement operator) by its ``conf/task`` name, e.g. ``get_task("sr4x")``.

    Images are ``(B, C, *S)`` tensors in encoded units (``[-1, 1]``); ``task.forward(x, params)``,
    ``task.adjoint(y, params)``, ``task.degrade(x, generator)`` (forward + noise, fresh masks) and
    ``task.sample_params(shape, generator)`` as in docs/physics.md.

    Args:
        name: ``denoise``, ``sr2x``, ``sr4x``, ``thick_slices``, ``mri_r4``, ``mri_r8``.
        **overrides: constructor options replacing the config's (``spatial_dims=3``, ``noise_std=0.01``).

    Raises:
        UsageError: an unknown name or option, or a value out of range.
    """
    from medrecon.physics.registry import build_task

    try:
        return build_task(name, **overrides)
    except (ValueError, TypeError) as err:
        raise UsageError(f"task {name!r}: {err}") from err


def baseline(name: str) -> Any:
    """A classical baseline by name: ``fn(task, meas) -> x_hat (B, C, *S)`` on the task's output grid.

    ``input``, ``bicubic``, ``zero_filled``, ``tv``, ``nlm`` (``medrecon.baselines``); ``fn`` raises
    ValueError for a task it does not apply to.

    Raises:
        UsageError: an unknown name.
    """
    from medrecon.baselines import get_baseline

    try:
        return get_baseline(name)
    except ValueError as err:
        raise UsageError(str(err)) from err


# ------------------------------------------------------------------------------------------------ reconstruct
@dataclass
class Reconstruction:
    """A reconstructed scan.

    Attributes:
        array: the reconstruction in scanner units on the output grid: ``(I*f, J*f, K)`` for a volume (``f``
            the task's in-plane factor, 1 for denoising and MRI), ``(H*f, W*f)`` for a 2D image.
        std: the posterior standard deviation (``samples > 1``, diffusion), same shape, or ``None``.
        affine: 4x4 voxel -> RAS mm of the output grid (an array without geometry: 1 mm input voxels).
        method: ``diffusion``, ``regression`` or the baseline's name.
        task: the task's name.
        meta: the volume's metadata (modality), no patient identifiers.
        note: what was done to the input (NaN voxels replaced, spacing flagged), or empty.
        seconds: time spent, preparation included.
    """

    array: np.ndarray
    std: np.ndarray | None
    affine: np.ndarray
    method: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0

    @property
    def volume(self) -> Volume:
        """The reconstruction as a ``Volume`` (``(I, J, K)``; a 2D result as ``(H, W, 1)``), e.g. for
        ``medrecon.io.nifti.write_nifti``."""
        from medrecon.volume import Volume

        array = self.array if self.array.ndim == 3 else self.array[..., None]
        return Volume(np.asarray(array, dtype=np.float32), self.affine, dict(self.meta))


def reconstruct(
    model_or_method: Model | str,
    data: Any,
    *,
    task: str | Task | None = None,
    sampler: str | Any = "mmse",
    steps: int | None = None,
    guidance: str | Any = "dc",
    samples: int = 1,
    blend: str = "auto",
    seed: int = 0,
    batch_size: int | str = "auto",
    device: str | None = None,
    precision: str = "auto",
    compile: bool = False,
    progress: bool = False,
    axis: int | None = None,
    spacing: str = "native",
    spacing_tolerance: float = 1.5,
    encoder: dict[str, Any] | None = None,
    modality: str | None = None,
) -> Reconstruction:
    """Reconstruct one degraded scan with a model (diffusion, or a regression model) or a baseline.

    The scan *is* the measurement, as for ``medrecon reconstruct``: a low-resolution image for ``sr2x``/
    ``sr4x``, a noisy one for ``denoise``, thick slices for ``thick_slices``; MRI tasks take measured k-space,
    i.e. a path to a fastMRI ``.h5`` file.

    Args:
        model_or_method: a :class:`Model` (:func:`load_model`), or a baseline's name (``"bicubic"``, ``"tv"``,
            ...; with ``task=``).
        data: a numpy array or torch tensor ``(I, J, K)`` (or a 2D image ``(H, W)``) in scanner units, a
            ``Volume`` (its affine gives the output grid and the spacing check), or a path to one scan (a NIfTI
            file, a DICOM file of a series or its folder, a fastMRI ``.h5`` file) read as the command reads it.
        task: a ``conf/task`` name or a :func:`get_task` object; needed for a baseline, else the model's.
        sampler: ``mmse`` (default: E[x|y] + refinement; for 2D MRI the refinement starts from TV, its
            ``start=auto``), ``dpmpp``, ``ddim``, ``ddpm`` (``conf/sampler``), a mapping of their options, or a
            ``SamplerConfig`` (``dataclasses.replace(medrecon.recon.setup.sampler_config("mmse"),
            start="model")``: the model's own estimate).
        steps: the sampler's steps (network evaluations per slice); ``None``: its default.
        guidance: ``dc`` (data consistency, default), ``dps`` or ``none``, a mapping (``{"name": "dps",
            "scale": 500.0}``) or a ``GuidanceConfig``.
        samples: posterior samples per slice (``std`` when > 1; diffusion only).
        blend: ``auto`` (default: an MRI model's output mixed with TV, a denoising model's with NLM, per slice
            by a weight estimated from the measurement; no blend for other tasks), ``none``, ``tv``, ``nlm``
            (``medrecon.recon.blend``).
        seed: every slice's noise derives from it, the item id and the slice index.
        batch_size: slices per batch (halved automatically on GPU out-of-memory), or ``"auto"`` (sized from
            free GPU memory; 16 on the CPU).
        device: where to run: ``None`` = the model's device (baselines: ``auto``).
        precision: the network's precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``bf16``, ``fp32``.
        compile: ``torch.compile`` the network (long GPU runs).
        progress: show a progress bar (slices, ETA).
        axis: slice axis 0/1/2 for 2D models (``None``: the model's).
        spacing, spacing_tolerance: ``native`` or ``auto`` (resample a scan far from the training spacing;
            needs a ``Volume`` or a file: a bare array has no spacing and is not checked).
        encoder: intensity encoder options for a baseline (default: ``conf/reconstruct.yaml``'s ``encoder``);
            a model brings its own.
        modality: ``CT``, ``MR``, ... of an array (chooses a baseline's encoder: a HU window for CT).

    Raises:
        UsageError: a bad option, or an input the task cannot use (the reason code and sentence).
        NonFiniteOutput: the reconstruction holds NaN/inf (a ValueError).
        RuntimeError: the reconstruction failed (e.g. out of memory for a single slice).
    """
    from medrecon.io.errors import RejectedInput
    from medrecon.recon.jobs import prepare_job, volume_job
    from medrecon.recon.setup import command_defaults, reconstruct_setup, run_options
    from medrecon.recon.spacing import SpacingPolicy

    started = time.perf_counter()
    method_name, loaded = _method(model_or_method)
    options = run_options(
        device=_device(loaded, device),
        precision=precision,
        batch_size=batch_size,
        samples=samples,
        seed=seed,
        compile=compile,
        blend=blend,
    )
    setup = reconstruct_setup(
        method_name,
        loaded=loaded,
        task=task,
        sampler=_sampler(sampler, steps),
        guidance=guidance,
        options=options,
        axis=axis,
        spacing={"spacing": spacing, "spacing_tolerance": spacing_tolerance},
        encoder=command_defaults("reconstruct").get("encoder") if encoder is None else encoder,
    )
    source, squeeze = _measurement(data, modality)
    try:
        if source is None:  # a path: the command's reader and verdict
            job = prepare_job(_one_item(data), setup)
        else:
            if not source.meta.get("geometry", True):  # a bare array: no spacing to check
                setup.spacing = SpacingPolicy(mode=str(spacing))
            job = volume_job(source, str(source.meta.get("id") or "array"), setup, started=started)
    except RejectedInput as err:
        raise UsageError(f"{err.reason.value}: {err.detail}") from err
    array, std = _run_one(job, setup, options, progress)
    if squeeze:
        array, std = array[..., 0], (None if std is None else std[..., 0])
    ctx = job.context
    return Reconstruction(
        array=np.asarray(array, dtype=np.float32),
        std=None if std is None else np.asarray(std, dtype=np.float32),
        affine=np.asarray(ctx.affine, dtype=np.float64),
        method=setup.method_name,
        task=str(getattr(setup.task, "name", "")),
        meta=dict(ctx.meta),
        note=ctx.note,
        seconds=time.perf_counter() - started,
    )


def _method(model_or_method: Any) -> tuple[str, Any]:
    if isinstance(model_or_method, Model):
        return "diffusion", model_or_method.loaded
    if isinstance(model_or_method, str):
        if model_or_method == "diffusion":
            raise UsageError("method diffusion needs a model: reconstruct(load_model(...), data)")
        return model_or_method, None
    raise UsageError(
        f"reconstruct takes a Model (load_model) or a baseline's name, got {type(model_or_method).__name__}"
    )


def _device(loaded: Any, device: str | None) -> Any:
    """The run's device: the model's (a different ``device`` is refused: load the model there), else ``auto``."""
    from medrecon.device import resolve_device

    if loaded is None:
        return resolve_device(device or "auto")
    here = next(loaded.precond.parameters()).device
    if device is None:
        return here
    wanted = resolve_device(device)
    if wanted.type != here.type or (wanted.index is not None and wanted.index != here.index):
        raise UsageError(
            f"device={device}: the model is on {here}; load it there with load_model(device=...)"
        )
    return here


def _sampler(sampler: Any, steps: int | None) -> Any:
    from medrecon.recon.setup import sampler_config

    return sampler_config(sampler, steps)


def _measurement(data: Any, modality: str | None) -> tuple[Any, bool]:
    """``(Volume, squeeze)`` for an array, tensor or Volume (NaN voxels replaced as every reader does);
    ``(None, False)`` for a path."""
    from medrecon.io.errors import RejectedInput
    from medrecon.io.finite import apply_policy
    from medrecon.volume import Volume

    if isinstance(data, (str, Path)):
        return None, False
    if isinstance(data, Volume):
        if data.array.ndim != 3:
            raise UsageError(f"reconstruct takes a 3D Volume, got shape {data.shape}")
        array, meta = np.asarray(data.array, dtype=np.float32), dict(data.meta)
        affine, squeeze = data.affine, False
    else:
        array = _as_array(data)
        squeeze = array.ndim == 2
        if squeeze:
            array = array[..., None]
        meta = {"modality": modality, "geometry": False}
        affine = np.eye(4)
    try:
        array, notes = apply_policy(array.copy())
    except RejectedInput as err:
        raise UsageError(f"{err.reason.value}: {err.detail}") from err
    meta.update(notes)
    return Volume(array, affine, meta), squeeze


def _as_array(data: Any) -> np.ndarray:
    """A numpy array or torch tensor as a float32 ``(I, J, K)`` or ``(H, W)`` numpy array."""
    if type(data).__module__.startswith("torch"):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise UsageError(
            f"data must be a numpy array, a torch tensor, a Volume or a path, got {type(data).__name__}"
        )
    if data.ndim not in (2, 3):
        raise UsageError(f"data must be a 2D image (H, W) or a volume (I, J, K), got shape {data.shape}")
    if np.iscomplexobj(data):
        raise UsageError("data is complex: give a magnitude image, or measured k-space as a fastMRI .h5 file")
    return np.asarray(data, dtype=np.float32)


def _one_item(path: str | Path) -> Any:
    """The one scan a path names (``medrecon.recon.inputs.resolve_inputs``); a usage error for none or many."""
    from medrecon.recon.inputs import resolve_inputs

    items = resolve_inputs(str(path))
    if len(items) != 1:
        raise UsageError(
            f"{Path(path).name} holds {len(items)} scans; reconstruct takes one (loop over them, or use "
            "'medrecon reconstruct' for a folder)"
        )
    return items[0]


def _run_one(job: Any, setup: Any, options: Any, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Run one job through the engine (batches, OOM halving); its decoded ``(array, std)``."""
    from medrecon.io.finite import require_finite
    from medrecon.progress import Progress
    from medrecon.recon.engine import Engine
    from medrecon.recon.jobs import decode_result

    done: dict[str, Any] = {}
    failed: list[tuple[str, str]] = []

    def on_done(finished: Any, mean: Any, std: Any) -> None:
        done["result"] = decode_result(finished.context, mean, std)

    def on_fail(finished: Any, reason: str, detail: str) -> None:
        failed.append((reason, detail))

    bar = Progress(job.count, 1, progress, desc="reconstruct")
    engine = Engine(
        {setup.method_name: setup.method},
        device=options.device,
        on_done=on_done,
        on_fail=on_fail,
        on_batch=bar.units_done,
        **options.engine_options(),
    )
    try:
        engine.submit(job)
        engine.flush()
    finally:
        bar.item_done()
        bar.close()
    if failed or "result" not in done:
        reason, detail = failed[0] if failed else ("error", "no result")
        raise RuntimeError(f"the {setup.method_name} reconstruction failed: {reason} ({detail})")
    array, std = done["result"]
    require_finite(array, f"the {setup.method_name} reconstruction")
    if std is not None:
        require_finite(std, "the posterior standard deviation")
    return array, std


# ------------------------------------------------------------------------------------------------ evaluate
def evaluate(
    methods: list[str] | None,
    ground_truth: Any,
    *,
    task: str | Task | None = None,
    model: Model | str | Path | None = None,
    supervised: Model | str | Path | None = None,
    sampler: str | Any = "mmse",
    steps: int | None = None,
    guidance: str | Any = "dc",
    samples: int = 1,
    blend: str = "auto",
    seed: int = 0,
    batch_size: int | str = "auto",
    device: str | None = None,
    precision: str = "auto",
    compile: bool = False,
    progress: bool = False,
    axis: int | None = None,
    split: str = "test",
    slices: tuple[int | None, int | None] | list[int | None] | None = None,
    slice_split: str | dict[str, Any] | None = "auto",
    spacing: str = "native",
    spacing_tolerance: float = 1.5,
    encoder: dict[str, Any] | None = None,
    modality: str | None = None,
    foreground: tuple[float, int] = (0.05, 2),
    max_items: int | None = None,
    out: str | Path | None = None,
    figures: int = 2,
) -> Report:
    """Degrade ground truth with the task, reconstruct it with every method, and score it, as
    ``medrecon evaluate`` does (docs/evaluation.md); the report comes back as data.

    Args:
        methods: method names (``diffusion`` and ``supervised`` need ``model`` / ``supervised``, the rest are
            baselines); ``None``: the task family's defaults (``medrecon.evaluate.selection``).
        ground_truth: a numpy array or torch tensor ``(I, J, K)`` (or ``(H, W)``) in scanner units, a ``Volume``,
            a list of those, a manifest (``.jsonl``: the records of ``split``, as the command selects them), or
            a folder or file of scans (every readable one).
        task: a ``conf/task`` name or a :func:`get_task` object; needed without a model, else the model's.
        model: the diffusion model (a :class:`Model` or a checkpoint path); a regression model given here is
            evaluated as ``supervised``.
        supervised: a regression model of the same task and data options (adds ``supervised``).
        sampler, steps, guidance, samples, blend, seed, batch_size, device, precision, compile, progress,
            axis, spacing, spacing_tolerance, encoder, modality: as for :func:`reconstruct` (``encoder`` default:
            ``conf/evaluate.yaml``'s).
        split: the manifest split (or the held-out slab of a slice split) to evaluate.
        slices: ``[start, stop]`` along the slice axis (Python slice semantics), else see ``slice_split``.
        slice_split: ``auto`` (the model's held-out slab: the slices it never trained on; whole volumes
            without a model or slice split), ``None`` (whole volumes) or ``{axis, val, test, gap}``.
        foreground: ``(fraction, dilation)`` of the ``*_fg`` metrics' mask.
        max_items: evaluate at most this many volumes.
        out: a folder to write ``report.json``, ``metrics.csv``, ``report.md`` and the figure panels to
            (``None``: nothing is written).
        figures: figure panels for the first N volumes (with ``out``).

    Returns:
        The ``Report``: ``report.methods[name].psnr`` (``MethodScores``: means and standard deviations),
        ``report.rows`` (per volume and method), ``report.failed``, ``report.as_dict()`` (report.json).

    Raises:
        UsageError: a bad option or method, models that do not fit, nothing to evaluate.
    """
    from omegaconf import OmegaConf

    from medrecon.evaluate.run import evaluate_sources, evaluation_setup, pair_models
    from medrecon.recon.setup import check_int, command_defaults, guidance_config, run_options

    loaded = _loaded(model, device, "model")
    sup = _loaded(supervised, device, "supervised")
    options = run_options(
        device=_device(loaded if loaded is not None else sup, device),
        precision=precision,
        batch_size=batch_size,
        samples=samples,
        seed=seed,
        compile=compile,
        blend=blend,
    )
    if loaded is not None and sup is not None and _device(loaded, None) != _device(sup, None):
        raise UsageError("model and supervised are on different devices; load them on the same one")
    loaded, sup, sup_name, label = pair_models(loaded, sup, _name(model), _name(supervised), axis)
    sampler_cfg = _sampler(sampler, steps)
    guidance_cfg = guidance_config(guidance)
    selection = OmegaConf.create(
        {"split": split, "slices": None if slices is None else list(slices), "slice_split": slice_split}
    )
    ev = evaluation_setup(
        methods,
        loaded=loaded,
        supervised=sup,
        supervised_label=label,
        task=task,
        sampler=sampler_cfg,
        guidance=guidance_cfg,
        options=options,
        selection=selection,
        axis=axis,
        spacing={"spacing": spacing, "spacing_tolerance": spacing_tolerance},
        encoder=command_defaults("evaluate").get("encoder") if encoder is None else encoder,
    )
    ev.sampler = asdict(sampler_cfg) if ev.sampler is not None else None
    ev.guidance = asdict(guidance_cfg) if ev.guidance is not None else None
    ev.foreground = (float(foreground[0]), int(foreground[1]))
    ev.figure_volumes = check_int("figures", figures, 0)
    sources, excluded, described, bare = _sources(ground_truth, ev.rule, modality)
    if bare:  # arrays have no geometry: their spacing is unknown, not checked
        from medrecon.recon.spacing import SpacingPolicy

        ev.spacing = SpacingPolicy(mode=str(spacing))
    if max_items is not None:
        sources = sources[: check_int("max_items", max_items, 1)]
    if not sources:
        raise UsageError(f"nothing to evaluate in {described} ({ev.rule.describe()})")
    notes = list(ev.notes)
    if excluded:
        from medrecon.evaluate.selection import excluded_note

        notes.append(excluded_note(excluded))
    model_used = ev.model
    config = {
        "ground_truth": described,
        "checkpoint": _name(model) if ev.loaded is not None else None,
        "checkpoint_step": ev.loaded.step if ev.loaded is not None else None,
        "supervised_checkpoint": sup_name if ev.supervised is not None else None,
        "supervised_step": ev.supervised.step if ev.supervised is not None else None,
        "task_config": dict(model_used.spec.task) if model_used is not None else _task_config(task),
    }
    folder = None if out is None else Path(out)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    report = evaluate_sources(
        sources, ev, config=config, notes=notes, excluded=excluded, out=folder, progress=progress
    )
    if folder is not None:
        report.write(folder)
    return report


def _loaded(model: Any, device: str | None, what: str) -> Any:
    """A ``LoadedModel`` from a :class:`Model`, a checkpoint path or ``None``."""
    if model is None:
        return None
    if isinstance(model, Model):
        return model.loaded
    if isinstance(model, (str, Path)):
        return load_model(model, device=device or "auto").loaded
    raise UsageError(f"{what}= takes a Model (load_model) or a checkpoint path, got {type(model).__name__}")


def _name(model: Any) -> str:
    if isinstance(model, Model):
        return model.path.name
    return Path(str(model)).name if model is not None else ""


def _task_config(task: Any) -> Any:
    if isinstance(task, str):
        from medrecon.physics.registry import task_config

        return task_config(task)
    return None if task is None else {"name": getattr(task, "name", None)}


def _sources(
    ground_truth: Any, rule: Any, modality: str | None
) -> tuple[list[Any], list[dict[str, str]], str]:
    """The evaluation's sources, the records the selection excludes, and what was given (for the report)."""
    from medrecon.evaluate.run import Source, record_source
    from medrecon.recon.setup import scrub
    from medrecon.volume import Volume

    if isinstance(ground_truth, (str, Path)):
        path = Path(ground_truth)
        if path.name.lower().endswith(".jsonl"):
            from medrecon.data.source import read_records
            from medrecon.evaluate.selection import rejected_records, select_records

            records = read_records(str(path))
            chosen, rejected = select_records(records, rule), rejected_records(records, rule)
        else:
            from medrecon.recon.inputs import resolve_inputs

            items = resolve_inputs(str(path))
            chosen = [i for i in items if i.status == "ok"]
            rejected = [i for i in items if i.status != "ok"]
        excluded = [
            {"id": r.id, "reason": r.reason or "rejected", "detail": scrub(r.detail)} for r in rejected
        ]
        return [record_source(r) for r in chosen], excluded, path.name, False
    volumes = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    sources = []
    for n, value in enumerate(volumes):
        if isinstance(value, Volume):
            volume = value
        else:
            array = _as_array(value)
            volume = Volume(array if array.ndim == 3 else array[..., None], np.eye(4), {"modality": modality})
        item_id = str(volume.meta.get("id") or f"volume{n}")
        sources.append(Source(item_id, volume.meta.get("modality"), volume.shape, _ground_truth(volume)))
    bare = not any(isinstance(value, Volume) for value in volumes)
    return sources, [], f"{len(sources)} in-memory volume(s)", bare


def _ground_truth(volume: Volume) -> Any:
    """``load()`` of an in-memory ground truth: infinities refused, NaN voxels kept (no ground truth there)."""
    from medrecon.io.finite import apply_policy
    from medrecon.volume import Volume

    def load() -> Volume:
        array, notes = apply_policy(np.array(volume.array, dtype=np.float32), keep_nan=True)
        return Volume(array, volume.affine, {**volume.meta, **notes})

    return load
