"""The training-state file for resume: optimiser, LR schedule, EMA count, step, RNG states, data position.

Written with ``torch.save`` as tensors and plain containers only and read back with
``torch.load(weights_only=True)``, which refuses anything else (no pickled code runs on load). The weights
themselves live in the matching checkpoint ``ckpt_<step>.safetensors``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrecon.io.atomic import atomic_path

STATE_FORMAT = "medrecon-train-state/1"


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, python ``random``) as tensors and ints."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (the global state)
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a training state atomically (``state`` must hold only tensors and plain containers)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)
    return path


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state with ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        ValueError: the file is not a medrecon training state.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a medrecon training state ({STATE_FORMAT})")
    return state
