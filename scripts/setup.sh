#!/usr/bin/env bash
# Set up medrecon in ./.venv: picks the right PyTorch build for this machine, then installs medrecon (editable)
# with its test tools. Re-running it is safe and quick.
#
#   NVIDIA GPU visible (nvidia-smi -L works)  -> PyPI's default torch wheel (a CUDA build)
#   otherwise                                 -> torch==2.13.0; set MEDRECON_TORCH_INDEX to a CPU-only wheel
#                                                index (for example PyTorch's own CPU index) to avoid the large
#                                                CUDA download on CPU-only machines.
#   torch already importable in .venv         -> left as it is
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MEDRECON_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
    "$PY" -m pip install -q torch
  else
    echo "setup: no GPU found, installing the CPU build of torch"
    "$PY" -m pip install -q "torch==2.13.0" ${MEDRECON_TORCH_INDEX:+--index-url "$MEDRECON_TORCH_INDEX"}
  fi
fi

"$PY" -m pip install -q -e ".[dev]"
"$PY" -c "import torch, medrecon; print(f'setup: medrecon {medrecon.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
