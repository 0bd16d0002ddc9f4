#!/usr/bin/env bash
# The CUDA checks in one go, for a machine with a GPU whose python3 already has torch, timm, pytest and
# hypothesis: the CUDA tests, the peer benchmark on the GPU, then a profile of compare. Nothing is
# downloaded: the peers come as wheels from WHEELS (see benchmarks/README.md), reprsim from this checkout.
# Usage: bash benchmarks/cuda_checks.sh OUTDIR [WHEELS]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: cuda_checks.sh OUTDIR [WHEELS]}
mkdir -p "$out"
if [ -n "${2:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/reprsim-peers "$2"/*.whl || exit 1
  export PYTHONPATH=/tmp/reprsim-peers
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -m cuda -p no:cacheprovider -q -rs tests 2>&1 | tee "$out/cuda-tests.log"
tests=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-360}" python3 benchmarks/peers/bench_peers.py --device cuda --repeats 5 --model-repeats 3 \
  --jsonl "$out/cuda.jsonl" --out "$out/results-cuda.md" --chart "$out/benchmarks-cuda.png" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
timeout "${PROFILE_TIMEOUT:-120}" python3 benchmarks/profile_compare.py --device cuda 2>&1 | tee "$out/profile.txt"
echo "cuda tests: exit $tests; benchmark: exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
