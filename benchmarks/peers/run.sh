#!/usr/bin/env bash
# Install the peer CKA libraries into their own virtual environment (never into reprsim's dependencies) and
# run every workload for reprsim and each peer in one process. Usage: bash benchmarks/peers/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=benchmarks/_peers/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first (with the torchvision timm needs), so no requirement drags in another build
  "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$venv/bin/python" -m pip install -q -e ".[plot]" timm scipy pytorch-cka==1.1.3 ckatorch==1.0.3 torch-cka==0.21
fi
"$venv/bin/python" benchmarks/peers/bench_peers.py "$@"
