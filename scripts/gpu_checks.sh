#!/usr/bin/env bash
# The checks that need a CUDA GPU, which CI (CPU-only) cannot run: the CUDA-only tests (trainer=gpu,
# trainer=fsdp, trainer=deepspeed with ZeRO-2/3) and, with --bench, the offline-RL GPU benchmark (plain loop,
# train.py eager and compiled, CORL-style script).
#   bash scripts/gpu_checks.sh [--bench] [out_dir]
# Needs the project's Python packages. Where they are missing and a folder .whl/ of wheels is present,
# those are installed into /tmp/site first (a GPU machine whose Python has torch and lightning but not
# hydra/gymnasium/deepspeed, with no package index).
set -uo pipefail
bench=0
if [ "${1:-}" = "--bench" ]; then bench=1; shift; fi
out=${1:-${OUT:-gpu_checks}}
mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import hydra, gymnasium, deepspeed" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, lightning, deepspeed; print('torch', torch.__version__, 'lightning', lightning.__version__, 'deepspeed', deepspeed.__version__)"
} 2>&1 | tee "$out/machine.txt"
start=$(date +%s)
python3 -m pytest -v -rs -p no:cacheprovider --junitxml="$out/junit.xml" \
    tests/cluster/test_gpu_strategies.py \
    tests/test_train.py::test_train_on_gpu_matches_cpu_pipeline \
    tests/data/test_trajectories.py::test_buffer_on_gpu_samples_on_gpu 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
echo "gpu tests: exit $status in $(( $(date +%s) - start )) s" | tee -a "$out/machine.txt"
if [ $bench = 1 ]; then
    timeout 300 python3 benchmarks/bench_offline.py --device cuda --algos bc,td3bc,iql --updates 1000 \
        --rounds 2 --compile --corl 2>"$out/bench.err" | tee "$out/bench_offline.jsonl"
fi
exit "$status"
