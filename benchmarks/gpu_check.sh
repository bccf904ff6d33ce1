#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine with torch already installed (no registry there):
#   build      the extension (CPU + CUDA for sm_80 and the visible card) with that machine's python3
#   alone      the tests named by ALONE_TESTS (default: the one that crashed its xdist worker on the first GPU run)
#              in one process without xdist, and under cuda-gdb for a backtrace if they fail
#   tests-cpp  the test suite's compiled-kernel cells on CUDA (everything but the Triton backend)
#   tests-triton  the Triton backend's cells on CUDA (each kernel JIT-compiles on first use: its own budget)
#   memcheck, initcheck, racecheck, synccheck   compute-sanitizer over tests/sanitizer_smoke.py (memcheck with
#              the caching allocator off, so that an overrun of one tensor into the next is caught); racecheck
#              and synccheck only for the CUDA kernels (the ones with shared memory and barriers of their own)
#   ncu        Nsight Compute over benchmarks/ncu_workload.py: per kernel of roi_align and semantic_align forward
#              and backward (cpp and Triton), time, atomic sectors at L2, L2 and DRAM bytes, occupancy, registers
#   model      benchmarks/bench_model.py on CUDA (the SAM-DETR training step and inference, fused vs reference)
#   bench      the benchmark suite on CUDA
# in this order (the most needed first, so that GPU_CHECK_DEADLINE cuts the least needed),
# and write benchmarks/results/gpu-check-<card>.md naming the card. Each step's log is kept beside it; a failing
# or overrunning step (each has a time budget) is reported and the next one still runs. Exit status: non-zero if
# any step failed.
#
# Measured on an H200 (2026-12-04, 16 cores, sm_90 only): build 49-57 s, alone 10 s (38 s with the backtrace),
# tests-cpp 50 s, tests-triton 158 s, memcheck-cpp 19 s, memcheck-triton 89 s, initcheck-cpp 12 s, racecheck 35 s,
# synccheck 10 s, ncu 21 s, model 13 s: about 8 minutes before bench. One device call holds ten and a session 15
# with the machine's start, so run e.g.
#   GPU_CHECK_DEADLINE=540 GPU_ARCH_LIST=9.0 make gpu-check                   # the bench step is cut if need be
#   GPU_CHECK_STEPS="build bench model" make gpu-check                         # the timings alone
# (a step runs when its name or its group is listed: "tests" = tests-cpp and tests-triton)
# (the build stays between calls on the same machine; each run rewrites the report with the steps it ran).
# More benchmark cases: `python3 -m benchmarks.bench --device cuda --full --time-budget 540` in a call of its own.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-python3}
STEPS=${GPU_CHECK_STEPS:-build alone tests memcheck initcheck racecheck synccheck ncu model bench}
started=$(mktemp)  # files in results/ newer than this are this run's
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export FORCE_CUDA=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
results=benchmarks/results
mkdir -p "$results"
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0))" 2>/dev/null || echo "no-gpu")
capability=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))" 2>/dev/null || echo "9.0")
slug=$(echo "$card" | tr ' /' '--')
logs="$results/gpu-check-$slug"
mkdir -p "$logs"
report="$results/gpu-check-$slug.md"
status=0
declare -a summary

wants() {  # a step runs when named, or when its group is (tests-cpp: "tests-cpp" or "tests")
  [[ " $STEPS " == *" $1 "* || " $STEPS " == *" ${1%%-*} "* ]]
}

# GPU_CHECK_DEADLINE=S: the whole run ends within S seconds (steps run in priority order; a step's budget is cut
# to the time left and a step with under 20 s left is skipped), so that one device call always brings back a report.
DEADLINE=${GPU_CHECK_DEADLINE:-0}

run_step() {  # name, seconds allowed, command...
  local name=$1 budget=$2; shift 2
  wants "$name" || return 0
  if (( DEADLINE > 0 )); then
    local left=$((DEADLINE - SECONDS))
    if (( left < 20 )); then summary+=("| $name | skipped (deadline) | 0 s | |"); return 0; fi
    (( budget > left )) && budget=$left
  fi
  local log="$logs/$name.log" start=$SECONDS
  echo "== $name (at most ${budget} s): $*"
  if timeout --signal=INT --kill-after=20 "$budget" "$@" >"$log" 2>&1; then
    summary+=("| $name | ok | $((SECONDS - start)) s | \`$(basename "$log")\` |")
  else
    summary+=("| $name | **FAILED** | $((SECONDS - start)) s | \`$(basename "$log")\` |")
    status=1
  fi
  tail -n 5 "$log"
  grep -a "^FAILED\|^ERROR " "$log" | cut -c1-220 | head -n 40  # which tests failed, in the reply's tail
  [[ -n "${OUT:-}" ]] && cp -r "$logs" "$OUT/" 2>/dev/null  # the device tool brings back only what is under $OUT
  return 0
}

SANITIZER=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")}
CS="$SANITIZER --error-exitcode 1 --tool"
SMOKE="$PY tests/sanitizer_smoke.py --device cuda"
# pytest-xdist, where installed, spreads the suite (and its Triton compiles) over the cores
XDIST=$($PY -c "import xdist" >/dev/null 2>&1 && echo "-n 8")
# The files with CUDA cells (the model and training tests have none: they are CPU work, CI's job); the CPU cells in
# these files are CI's too. test_triton_compile.py compiles for sm_80/sm_90 without a
# GPU: CI's job as well.
OP_TESTS="tests/test_cuda.py tests/test_api.py tests/test_library.py tests/test_nn.py tests/test_output_size.py
  tests/test_roi_align.py tests/test_semantic_align.py tests/test_pos_embed.py tests/test_ops_dropin.py"
PYTEST="$PY -m pytest -q -p no:cacheprovider -rfE $XDIST"
ALONE_TESTS=${ALONE_TESTS:-no_bins_raises_clearly}
NCU=${NCU:-$(command -v ncu || echo "$CUDA_HOME/bin/ncu")}
NCU_METRICS=gpu__time_duration.sum,lts__t_sectors_op_red.sum,lts__t_sectors_op_atom.sum,lts__t_bytes.sum,\
dram__bytes_read.sum,dram__bytes_write.sum,sm__warps_active.avg.pct_of_peak_sustained_active,\
sm__maximum_warps_per_active_cycle_pct,launch__registers_per_thread,launch__grid_size,launch__block_size
# sm_80 (A100) by default beside the visible card, so that one build checks both; GPU_ARCH_LIST narrows it
run_step build "${BUILD_SECONDS:-240}" env TORCH_CUDA_ARCH_LIST="${GPU_ARCH_LIST:-8.0;$capability}" \
  $PY setup.py build_ext --inplace
# The test that crashed its xdist worker on the first GPU run, alone in one process; on a crash, its backtrace
run_step alone 60 bash -c "$PY -m pytest -q -p no:cacheprovider -p no:xdist -rfE tests/test_cuda.py -k '$ALONE_TESTS' \
  || { echo '== cuda-gdb backtrace'; cuda-gdb -batch -ex run -ex bt --args $PY -m pytest -q -p no:cacheprovider \
       -p no:xdist tests/test_cuda.py -k '$ALONE_TESTS'; exit 1; }"
run_step tests-cpp "${TEST_CPP_SECONDS:-150}" $PYTEST $OP_TESTS -k "cuda and not triton"
run_step tests-triton "${TEST_TRITON_SECONDS:-240}" $PYTEST $OP_TESTS tests/test_triton.py -k "triton"
# Triton kernels JIT-compile per dtype and channel count, so their sanitizer runs get a smaller matrix
run_step memcheck-cpp 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $CS memcheck $SMOKE --backends cpp
run_step memcheck-triton 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $CS memcheck $SMOKE --backends triton \
  --dtypes float32,bfloat16 --channels 13,520
run_step initcheck-cpp 60 $CS initcheck $SMOKE --backends cpp
run_step initcheck-triton 60 $CS initcheck $SMOKE --backends triton --dtypes float32 --channels 13
run_step racecheck 60 $CS racecheck $SMOKE --backends cpp
run_step synccheck 40 $CS synccheck $SMOKE --backends cpp
# Where the backward kernels' time goes: atomic (red) sectors at L2, L2 and DRAM bytes, occupancy, registers
# (a metric this ncu does not know fails the whole run: then once more with the time and DRAM bytes alone)
NCU_RUN="$NCU --profile-from-start off --csv --metrics"
NCU_WORKLOAD="$PY -m benchmarks.ncu_workload --backends ${NCU_BACKENDS:-cpp,triton}"
run_step ncu 90 bash -c "$NCU_RUN $NCU_METRICS $NCU_WORKLOAD \
  || $NCU_RUN gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum $NCU_WORKLOAD"
run_step model "${MODEL_SECONDS:-90}" $PY -m benchmarks.bench_model --device cuda --no-plot ${BENCH_MODEL_ARGS:-}
run_step bench "${BENCH_SECONDS:-120}" $PY -m benchmarks.bench --device cuda --time-budget $((${BENCH_SECONDS:-120} - 30)) \
  ${BENCH_ARGS:-}

{
  echo "# gpu-check on $card (sm_${capability/./})"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $($PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'), steps: $STEPS"
  echo
  echo "| step | result | time | log |"
  echo "|---|---|---|---|"
  printf '%s\n' "${summary[@]}"
  for t in tests-cpp tests-triton; do
    wants $t && { echo "## $t"; echo '```'; tail -n 3 "$logs/$t.log"; echo '```'; }
  done
  for t in memcheck-cpp memcheck-triton initcheck-cpp initcheck-triton racecheck synccheck; do
    wants $t && { echo "## compute-sanitizer $t"; echo '```'; grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|smoke" "$logs/$t.log"; echo '```'; }
  done
  wants bench && { echo "## benchmark"; echo '```'; sed -n '/^samdetr_ops benchmark/,$p' "$logs/bench.log"; echo '```'; }
  wants ncu && { echo "## ncu (kernel, metric, value)"; echo '```'
    grep -a '^"' "$logs/ncu.log" | $PY -c "import csv,sys; [print(r[4][:70], r[-3], r[-1], sep=' | ') for r in csv.reader(sys.stdin) if r[0] != 'ID']" || true
    echo '```'; }
  wants model && { echo "## SAM-DETR model benchmark"; echo '```'; tail -n 25 "$logs/model.log"; echo '```'; }
} >"$report"
echo "report: $report"
[[ -n "${OUT:-}" ]] && find "$results" -maxdepth 1 -type f -newer "$started" -exec cp {} "$OUT/" \;
exit $status
