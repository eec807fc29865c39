#!/usr/bin/env bash
# The CUDA-graph checks and measurements, in one run (planned for about 6 minutes on an H200:
# up to 240 s of tests, 330 s of benchmark budget; not yet run):
#   1. the CUDA tests of the graphed loop and of the loop's other CUDA paths (pytest -m cuda);
#   2. validation.bench_cuda: S^2 and the rigid trimer, 10^3 to 10^7 chains, eager, CUDA
#      graphs, compiled, both (its JSON is written after every measurement).
# Usage: bash validation/gpu_graph_run.sh [OUT_DIR] [BUDGET_S]   (default validation/results/cuda, 330)
set -uo pipefail
out=${1:-validation/results/cuda}
budget=${2:-330}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || status=1
    python3 -c "import torch, geoopt; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'geoopt', geoopt.__version__)"
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m cuda \
        tests/sampling tests/test_no_sync.py tests/manifolds/test_stiefel.py \
        tests/manifolds/test_stacked.py \
        tests/optim/test_cuda.py || status=1
    python3 -m validation.bench_cuda --device cuda --budget-s "$budget" --out "$out" || status=1
    exit $status
} 2>&1 | tee "$out/gpu_graph_run.log"
