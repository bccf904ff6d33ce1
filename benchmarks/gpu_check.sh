#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine with torch already installed (no registry there), in one go:
#   1. build the extension (CPU + CUDA for the visible card) with that machine's python3
#   2. run the whole test suite (CUDA cases included)
#   3. run compute-sanitizer memcheck and racecheck over tests/sanitizer_smoke.py
#   4. run the benchmark suite on CUDA
# and write benchmarks/results/gpu-check-<card>.md naming the card. Each step's log is kept beside it; a failing
# or overrunning step (each has a time budget) is reported and the next one still runs. Exit status: non-zero if
# any step failed. More benchmark cases: `python3 -m benchmarks.bench --device cuda --full --time-budget 540` in a
# call of its own.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export FORCE_CUDA=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
results=benchmarks/results
mkdir -p "$results"
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null || echo "no-gpu")
slug=$(echo "$card" | tr ' /' '--')
logs="$results/gpu-check-$slug"
mkdir -p "$logs"
report="$results/gpu-check-$slug.md"
status=0
declare -a summary

run_step() {  # name, seconds allowed, log file, command...
  local name=$1 budget=$2 log=$3; shift 3
  local start=$SECONDS
  echo "== $name (at most ${budget} s): $*"
  if timeout --signal=INT --kill-after=20 "$budget" "$@" >"$log" 2>&1; then
    summary+=("| $name | ok | $((SECONDS - start)) s | \`$(basename "$log")\` |")
  else
    summary+=("| $name | **FAILED** | $((SECONDS - start)) s | \`$(basename "$log")\` |")
    status=1
  fi
  tail -n 5 "$log"
}

SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")}
# pytest-xdist, where installed, spreads the suite (and its Triton compiles) over the cores
XDIST=$($PY -c "import xdist" >/dev/null 2>&1 && echo "-n 8")
# Step budgets add up to about 9.5 minutes, so the whole check fits one ten-minute device call.
run_step build "${BUILD_SECONDS:-150}" "$logs/build.log" $PY setup.py build_ext --inplace
run_step tests "${TEST_SECONDS:-200}" "$logs/tests.log" $PY -m pytest tests -q -p no:cacheprovider $XDIST
run_step memcheck 50 "$logs/memcheck.log" "$SANITIZER" --tool memcheck --error-exitcode 1 $PY tests/sanitizer_smoke.py
run_step racecheck 50 "$logs/racecheck.log" "$SANITIZER" --tool racecheck --error-exitcode 1 $PY tests/sanitizer_smoke.py
run_step bench "${BENCH_SECONDS:-120}" "$logs/bench.log" $PY -m benchmarks.bench --device cuda --time-budget 90 ${BENCH_ARGS:-}

{
  echo "# gpu-check on $card"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $($PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
  echo
  echo "| step | result | time | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${summary[@]}"
  echo
  echo "## tests"; echo '```'; tail -n 3 "$logs/tests.log"; echo '```'
  echo "## compute-sanitizer"; echo '```'; grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|smoke" "$logs/memcheck.log" "$logs/racecheck.log"; echo '```'
  echo "## benchmark"; echo '```'; sed -n '/^samdetr_ops benchmark/,$p' "$logs/bench.log"; echo '```'
} >"$report"
echo "report: $report"
exit $status
