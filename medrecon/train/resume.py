"""Whether ``medrecon train`` continues the run already in its folder: ``resume=auto|true|false``.

- ``auto`` (the default): a folder without checkpoints (new, empty, or a run killed before its first
  checkpoint) starts at step 0; a folder whose newest checkpoint holds the *same configuration* continues from
  it (a SLURM job requeued with its original command line picks up where it stopped); a folder holding a run
  of a *different* configuration is refused with the differing keys, so no run is ever overwritten or
  continued with options it was not started with by accident.
- ``true``: continue from the newest checkpoint + training state whatever the options (a fresh start when
  there is none); the model, task and data geometry must still match (``Trainer.resume`` checks them). This
  is how a run is deliberately continued with changed options, e.g. a longer ``train.steps``.
- ``false``: start at step 0; a folder that already holds checkpoints is refused (never overwritten).

*Same configuration* means the resolved config stored in the newest checkpoint (file paths reduced to their
final names, as ``medrecon.checkpoint.save_checkpoint`` stores them) equals the current one in every key
except :data:`REQUEUE_KEYS`: the keys that do not change what is trained, or that a resubmitted job may
legitimately change (where it runs, how often it logs, validates and saves, where it pauses).
``train.steps`` is compared: it shapes the learning-rate schedule, so extending a run is a decision
(``resume=true``), not a requeue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medrecon.errors import UsageError
from medrecon.train.rundir import RunDir

RESUME_MODES = ("auto", "true", "false")

#: Dotted config keys that may differ between a stored run and the run that continues it under ``auto``.
REQUEUE_KEYS = frozenset(
    {
        "resume",  # this very choice
        "out",  # the folder is the run (stored as its final name only)
        "device",  # a requeued job may land on another GPU index
        "data.num_workers",  # samples do not depend on it (tested)
        "progress",  # train.progress in runs written before the shared vocabulary (medrecon.options)
        "train.log_every",
        "train.val_every",
        "train.ckpt_every",
        "train.keep_last",
        "train.stop_at",  # time-limited chunks: the schedule follows train.steps
    }
)

#: Options added after runs were first written, with the value that reproduces what a run written before them
#: did: a stored config without the key counts as holding that value, so such a run still requeues under
#: ``auto`` (any other value is a different configuration).
ADDED_DEFAULTS: dict[str, Any] = {
    "objective": "diffusion",
    "regression.norm": "l1",
    "loss.mmse_fraction": 0.0,
    "loss.mmse_sigma": 10.0,
    "data.augment.scale": None,
    "data.augment.gamma": None,
    "data.augment.bias_field": None,
    "data.augment.p": 0.5,
    # latent diffusion (medrecon.train.latent): options of the two stages, inert for other objectives
    "autoencoder_loss.norm": "l1",
    "autoencoder_loss.kl_weight": 1e-6,
    "autoencoder": None,
    "latent.condition": "encode",
    "latent.scale_samples": 16,
}

_MAX_LISTED = 8


def resume_mode(value: Any) -> str:
    """``resume=`` as one of :data:`RESUME_MODES` (booleans and their spellings accepted).

    Raises:
        UsageError: any other value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in RESUME_MODES:
        return value.strip().lower()
    raise UsageError(f"resume={value!r} is not one of {', '.join(RESUME_MODES)}")


def comparable_config(cfg: Any) -> dict[str, Any]:
    """The run config as a checkpoint stores it: resolved, file paths reduced to names, JSON types."""
    from medrecon.checkpoint import redact_paths

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return json.loads(json.dumps(redact_paths(container)))


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every non-mapping value (an empty mapping has none)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def config_differences(
    stored: Mapping[str, Any], current: Mapping[str, Any], ignore: frozenset[str] = REQUEUE_KEYS
) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only), sorted; keys in ``ignore`` (and below
    them) are left out. Renamed options are compared under their new names (``train.amp: true`` of a run
    written before the rename is ``precision: auto``, ``medrecon.options.RENAMED``); a key of
    :data:`ADDED_DEFAULTS` missing from either side takes its value there."""
    from medrecon.options import upgrade_renamed

    a = upgrade_renamed("train", dict(_leaves(stored)))
    b = upgrade_renamed("train", dict(_leaves(current)))
    for key, value in ADDED_DEFAULTS.items():
        a.setdefault(key, value)
        b.setdefault(key, value)
    missing = object()
    return sorted(
        key
        for key in set(a) | set(b)
        if a.get(key, missing) != b.get(key, missing)
        and not any(key == k or key.startswith(k + ".") for k in ignore)
    )


def should_resume(run_dir: RunDir, cfg: Any) -> bool:
    """Apply ``cfg.resume`` to the run folder: True to continue its run, False to start at step 0.

    Raises:
        UsageError: an invalid ``resume`` value; ``resume=false`` on a folder that holds a run; ``auto`` on a
            folder that holds a run of another configuration (the message names the differing keys).
    """
    mode = resume_mode(cfg.get("resume", "auto"))
    out = run_dir.root
    if mode == "true":
        return True
    if not run_dir.has_run():
        return False
    if mode == "false":
        raise UsageError(
            f"out={out} already holds a training run and resume=false starts from step 0: leave resume= out "
            "to continue it with its own options, pass resume=true to continue it with changed ones, or "
            "choose another out="
        )
    return _same_run(run_dir, cfg)


def _same_run(run_dir: RunDir, cfg: Any) -> bool:
    from medrecon.checkpoint import read_metadata

    steps = run_dir.steps()
    reference: Path = run_dir.ckpt(steps[-1]) if steps else run_dir.last
    stored = read_metadata(reference)["config"]
    differ = config_differences(stored, comparable_config(cfg))
    if not differ:
        return True
    listed = ", ".join(differ[:_MAX_LISTED]) + (
        f" (+{len(differ) - _MAX_LISTED} more)" if len(differ) > _MAX_LISTED else ""
    )
    raise UsageError(
        f"out={run_dir.root} holds a training run of another configuration ({reference.name} differs in "
        f"{listed}); choose another out=, rerun with that run's options, or pass resume=true to continue it "
        "with these options"
    )
