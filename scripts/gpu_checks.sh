#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md (benchmarks, CUDA-marked tests, the demo on the GPU).
#
#   bash scripts/gpu_checks.sh OUTDIR [STEP ...]
#
# STEPs (default: all, in this order): gpu_tests demo mmse2_b64 mmse5_b64 mmse2_b64_compile recon_auto
# fewstep train_b32 sample_b8 sample_b8_10steps sample_b32 sample_b8_compile sample_b8_compile_both. Runs with the python3 on PATH, which must have torch with CUDA;
# medrecon is used from this checkout (PYTHONPATH), so its other dependencies must be importable
# (pip install -e . does it). MONAI's attention needs einops. Each step's output goes to OUTDIR/<step>.log and
# the benchmarks' JSON to OUTDIR/<step>.json; a failing step does not stop the others. All steps take about
# 8 minutes on one H200.
set -u
out=${1:?usage: bash scripts/gpu_checks.sh OUTDIR [STEP ...]}
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(gpu_tests demo mmse2_b64 mmse5_b64 mmse2_b64_compile recon_auto fewstep
    train_b32 sample_b8 sample_b8_10steps sample_b32 sample_b8_compile sample_b8_compile_both)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run() {  # run NAME SECONDS COMMAND...
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
bench="python3 scripts/bench_sampling.py --size 256 --device cuda"
for s in "${steps[@]}"; do
    case $s in
    gpu_tests) run "$s" 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests ;;
    demo)
        run "$s" 150 python3 -m medrecon demo out=/tmp/medrecon_demo_gpu
        cp /tmp/medrecon_demo_gpu/eval/report.json "$out/demo_report.json" 2>/dev/null
        ;;
    # issue 13: few-step (posterior-quality) throughput at 256x256, target >= 100 slices/s
    mmse2_b64) run "$s" 120 $bench --batch 64 --sampler mmse --steps 2 --repeats 3 --skip-train \
        --json "$out/$s.json" ;;
    mmse5_b64) run "$s" 120 $bench --batch 64 --sampler mmse --steps 5 --repeats 3 --skip-train \
        --json "$out/$s.json" ;;
    mmse2_b64_compile) run "$s" 240 $bench --batch 64 --sampler mmse --steps 2 --repeats 3 --skip-train \
        --compile medrecon --json "$out/$s.json" ;;
    recon_auto)  # the real command on a sample archive: batch_size=auto, prefetch, background writing
        python3 -m medrecon sample-data out=/tmp/mr_gpu_sample >/dev/null 2>&1
        run "$s" 180 python3 -m medrecon reconstruct input=/tmp/mr_gpu_sample/nifti out=/tmp/mr_gpu_recon \
            checkpoint=medrecon/assets/weights/demo_sr4x.safetensors batch_size=auto device=cuda
        ;;
    fewstep) run "$s" 240 python3 scripts/bench_fewstep.py --json "$out/$s.json" ;;  # quality next to speed
    train_b32) run "$s" 150 python3 scripts/bench_training.py --size 256 --batch 32 --model unet_small \
        --device cuda --steps 10 --warmup 3 --json "$out/$s.json" ;;
    sample_b8) run "$s" 120 $bench --batch 8 --repeats 3 --json "$out/$s.json" ;;
    sample_b8_10steps) run "$s" 100 $bench --batch 8 --steps 10 --repeats 3 --json "$out/$s.json" ;;
    sample_b32) run "$s" 120 $bench --batch 32 --repeats 2 --json "$out/$s.json" ;;
    sample_b8_compile) run "$s" 200 $bench --batch 8 --repeats 3 --compile medrecon --skip-train \
        --json "$out/$s.json" ;;
    sample_b8_compile_both) run "$s" 240 $bench --batch 8 --repeats 3 --compile both --skip-train \
        --json "$out/$s.json" ;;
    *) echo "unknown step $s" ;;
    esac
done
