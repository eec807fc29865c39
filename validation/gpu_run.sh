#!/usr/bin/env bash
# The checks and measurements that need a CUDA device, in one run (3.5 minutes on an H200):
#   1. the CUDA tests (pytest -m cuda: no host syncs, compiled Triton update, CPU agreement, ...);
#   2. validation.half_precision on the GPU (the residual half-precision weights keep);
#   3. validation.bench_sampler and validation.bench_optim on the GPU.
# Usage: bash validation/gpu_run.sh [OUT_DIR]   (default validation/results/cuda)
# Writes the JSON and figures of 2-3 and gpu_run.log (everything printed) to OUT_DIR.
set -uo pipefail
out=${1:-validation/results/cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || status=1
    python3 -c "import torch, geoopt; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'geoopt', geoopt.__version__)"
    python3 -m pytest -q -p no:cacheprovider -m cuda tests || status=1
    python3 -m validation.half_precision --device cuda --out "$out" || status=1
    python3 -m validation.bench_sampler --device cuda --out "$out" || status=1
    python3 -m validation.bench_optim --device cuda --out "$out" || status=1
    exit $status
} 2>&1 | tee "$out/gpu_run.log"
