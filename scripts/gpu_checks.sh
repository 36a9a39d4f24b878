#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one go (benchmarks, CUDA-marked tests, the demo on the GPU).
#
#   bash scripts/gpu_checks.sh OUTDIR
#
# Runs with the python3 on PATH, which must have torch with CUDA; medrecon is used from this checkout
# (PYTHONPATH), so its other dependencies must be importable (pip install -e . does it). MONAI's attention
# needs einops. Each step's output goes to OUTDIR/<step>.log and the benchmarks' JSON to OUTDIR/*.json;
# a failing step does not stop the others. Takes about 5 minutes on one H100/H200.
set -u
out=${1:?usage: bash scripts/gpu_checks.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - t0)) s"
    tail -n 25 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"
bench=scripts/bench_sampling.py
step sample_b8_default 120 python3 $bench --size 256 --batch 8 --device cuda --repeats 3 --json "$out/sample_b8_default.json"
step sample_b8_10steps 100 python3 $bench --size 256 --batch 8 --device cuda --steps 10 --repeats 3 --json "$out/sample_b8_10steps.json"
step sample_b32_default 120 python3 $bench --size 256 --batch 32 --device cuda --repeats 2 --json "$out/sample_b32_default.json"
step gpu_tests 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests
step demo 150 python3 -m medrecon demo out=/tmp/medrecon_demo_gpu
cp /tmp/medrecon_demo_gpu/eval/report.json "$out/demo_report.json" 2>/dev/null
step train_b32 150 python3 scripts/bench_training.py --size 256 --batch 32 --model unet_small --device cuda \
    --steps 10 --warmup 3 --json "$out/train_b32.json"
