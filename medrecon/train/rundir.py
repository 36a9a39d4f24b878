"""The files of a training run directory (``out=RUN_DIR``)::

RUN_DIR/
  train.log                      the run's log (Hydra job logging)
  .hydra/                        the composed config, overrides (Hydra)
  tb/                            TensorBoard event files
  ckpt_00001000.safetensors      numbered checkpoints (raw + EMA weights); the last train.keep_last kept
  state_00001000.pt              the matching training states (resume)
  last.safetensors               the most recent checkpoint
  best.safetensors               the checkpoint with the best validation PSNR so far
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from medrecon.io.atomic import atomic_path

_NUMBERED = re.compile(r"^(ckpt|state)_(\d{8})\.(safetensors|pt)$")


@dataclass(frozen=True)
class RunDir:
    root: Path

    def ckpt(self, step: int) -> Path:
        return self.root / f"ckpt_{step:08d}.safetensors"

    def state(self, step: int) -> Path:
        return self.root / f"state_{step:08d}.pt"

    @property
    def last(self) -> Path:
        return self.root / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def steps(self) -> list[int]:
        """Steps that have both a checkpoint and a training state, ascending."""
        found: dict[int, set[str]] = {}
        if self.root.is_dir():
            for entry in os.listdir(self.root):
                m = _NUMBERED.match(entry)
                if m:
                    found.setdefault(int(m.group(2)), set()).add(m.group(1))
        return sorted(s for s, kinds in found.items() if kinds == {"ckpt", "state"})

    def has_run(self) -> bool:
        """Whether the directory already holds checkpoints of a run."""
        return bool(self.steps()) or self.last.exists()

    def copy_to(self, src: Path, dest: Path) -> None:
        """Copy a checkpoint atomically (``last``/``best``)."""
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)

    def prune(self, keep_last: int) -> list[int]:
        """Delete all but the newest ``keep_last`` checkpoint/state pairs; returns the deleted steps."""
        steps = self.steps()
        doomed = steps[:-keep_last] if keep_last > 0 else steps
        for step in doomed:
            for path in (self.ckpt(step), self.state(step)):
                path.unlink(missing_ok=True)
        return doomed
