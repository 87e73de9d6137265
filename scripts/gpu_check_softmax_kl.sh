#!/usr/bin/env bash
# GPU check of the fused softmax-KL loss (issue 4): the kernel tests on CUDA, then the benchmark.
#
#   bash scripts/gpu_check_softmax_kl.sh
#
# Needs one CUDA GPU and python with torch, triton and pytest (no network; Liger-Kernel is used if installed).
# Budget: at most ~8 minutes on one H100/H200 -- tests <= 150 s (mostly Triton compiles), accuracy <= 60 s,
# benchmark <= 280 s (about 5 minutes in all on an H200).
# Writes, under docs/benchmarks/ (<gpu> = the GPU name as a slug, e.g. nvidia-h100-80gb-hbm3):
#   softmax_kl_<gpu>_tests.log    pytest output (header line names the GPU)
#   softmax_kl_<gpu>.csv / .md    benchmark table (device, date, command inside)
#   softmax_kl_<gpu>_bench.log    benchmark console output
#   softmax_kl_<gpu>_accuracy.*   relative errors against float64 per kernel variant, temperature and dtype
# SOFTMAX_KL_OUT=DIR writes them under DIR instead.  Exit status: 0 when all three steps succeeded.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
unset TRITON_INTERPRET                      # compiled kernels, not the interpreter
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # import distill from this checkout
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"  # silences a triton >= 3.9 notice; 3.6 ignores it
OUT="${SOFTMAX_KL_OUT:-docs/benchmarks}"     # where the records go (a device run points it at its \$OUT)
mkdir -p "$OUT"

if ! "$PY" -c 'import torch, triton, pytest, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check_softmax_kl: needs CUDA plus torch, triton and pytest importable by $PY" >&2
    exit 2
fi
GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
GPU_SLUG=$("$PY" -c 'import re, torch; print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-"))')
VERSIONS=$("$PY" -c 'import sys, torch, triton; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, triton {triton.__version__}")')
echo "GPU: $GPU_NAME ($VERSIONS)"

# 1) Tests.  --noconftest: tests/kernels needs no fixtures from tests/conftest.py, and this keeps whatever the
#    rest of the suite imports there (lightning, hydra, ...) out of this check.
TEST_LOG="$OUT/softmax_kl_${GPU_SLUG}_tests.log"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $GPU_NAME ($VERSIONS)" > "$TEST_LOG"
echo "# pytest tests/kernels -m 'gpu or not slow'" >> "$TEST_LOG"
timeout 150 "$PY" -m pytest tests/kernels -m "gpu or not slow" -q -rs -p no:cacheprovider --noconftest \
    2>&1 | tee -a "$TEST_LOG"
TEST_RC=${PIPESTATUS[0]}

# 2) Accuracy against float64 per kernel variant, temperature and dtype (seconds).
timeout 60 "$PY" scripts/accuracy_softmax_kl.py --out-dir "$OUT" 2>&1 | tail -n 25
ACC_RC=${PIPESTATUS[0]}

# 3) Benchmark: rows {4096, 16384} x V {30522, 128256} x {bf16, fp32}, providers eager / compile / ours / liger,
#    plus a Triton block-size sweep on the largest shape.  What does not fit in the time budget is listed as
#    skipped; the .md/.csv are rewritten after every measurement, so a timeout still leaves partial results.
timeout 280 "$PY" scripts/bench_softmax_kl.py --device cuda --time-budget-s 230 --out-dir "$OUT" \
    --ours-blocks 512w4 1024w4 1024w8 2048w4 4096w8 1024w4v 2048w8v 8192w16v 2>&1 | tee "$OUT/softmax_kl_${GPU_SLUG}_bench.log"
BENCH_RC=${PIPESTATUS[0]}

echo "gpu_check_softmax_kl: tests rc=$TEST_RC, accuracy rc=$ACC_RC, bench rc=$BENCH_RC; results in $OUT/softmax_kl_${GPU_SLUG}*"
[ "$TEST_RC" -eq 0 ] && [ "$ACC_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
