#!/usr/bin/env bash
# gpu_check.sh: the GPU figures in one command (issue 13). Runs doctor, doctor --probe, compare
# (float64 must pass; float32/bfloat16 drift is recorded), bench of gemma-2-2b-shape on HB-1000 in
# bfloat16 and float32, and the GPU tests; each step under its own `timeout`, a failing step does
# not stop the others; everything lands in one folder with a summary.txt.
#
# Usage:
#   bash scripts/gpu_check.sh [--cpu] [--quick] [--budget SECONDS] [OUT_DIR]
#     OUT_DIR    default gpu-check/<UTC time>
#     --cpu      --device cpu instead of cuda (also GPU_CHECK_CPU=1, which implies --quick)
#     --quick    small trial: embedded preset (tiny), --limit 32, sizes 1,4, compare sizes 1,4
#     --budget   seconds for all steps together (default 450): a step's timeout is cut to what is
#                left, a step with under 5 s left is skipped and listed as such
#   CPU trial here:  bash scripts/gpu_check.sh --cpu --quick /tmp/gpu-check-cpu
#
# Environment: SAECLI (command to run saecli, e.g. "python3 -m saecli"; default `saecli` when on
# PATH, else `$PYTHON -m saecli`), PYTHON (default .venv/bin/python if present, else python3),
# GPU_CHECK_DATA (the HB-1000 folder; default .hb/ in the repo root, else ../shared/data/hb),
# GPU_CHECK_PRESET, GPU_CHECK_SIZES, GPU_CHECK_LIMIT, GPU_CHECK_COMPARE_SIZES to override.
#
# On the device machine (one call; prepare first, here: `bash ../shared/gpu/wheels.sh` fills .whl/
# and .hb/), use the `run` tool with
#   carry:     [".whl", ".hb"]
#   timeout_s: 570
#   command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#       && mkdir -p /tmp/site/wandb /tmp/site/plotly && touch /tmp/site/wandb/__init__.py /tmp/site/plotly/__init__.py \
#       && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit 1; bash scripts/gpu_check.sh "$OUT"
# (no `saecli` on PATH there, so it runs `python3 -m saecli`; the folder comes back as the call's files).
#
# Exit code: 0 when every required step passed (doctor, compare float64, both benches, the GPU
# tests; the float32/bfloat16 compares exit 1 by design and are only recorded), 1 otherwise.

set -u

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

cpu=0
quick=0
budget=${GPU_CHECK_BUDGET:-420}
out=""
if [[ "${GPU_CHECK_CPU:-0}" == 1 ]]; then cpu=1; quick=1; fi
while (($#)); do
  case "$1" in
    --cpu) cpu=1 ;;
    --quick) quick=1 ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --budget=*) budget=${1#--budget=} ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    *) [[ -z "$out" ]] || { echo "gpu_check.sh: one output folder only" >&2; exit 2; }; out=$1 ;;
  esac
  shift
done
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget must be whole seconds" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
out=${out:-gpu-check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" || { echo "gpu_check.sh: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)

if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x "$root/.venv/bin/python" ]]; then py=$root/.venv/bin/python
else py=python3; fi
if [[ -n "${SAECLI:-}" ]]; then read -r -a saecli <<<"$SAECLI"
elif command -v saecli >/dev/null 2>&1; then saecli=(saecli)
else saecli=("$py" -m saecli); fi

if [[ -n "${GPU_CHECK_DATA:-}" ]]; then data=$GPU_CHECK_DATA
elif [[ -d "$root/.hb" ]]; then data=$root/.hb
else data=$root/../shared/data/hb; fi
[[ -d "$data" ]] || echo "gpu_check.sh: warning: HB-1000 folder $data not found; the bench and probe steps will fail" >&2

if ((cpu)); then device=cpu; else device=cuda; fi
if ((quick)); then
  preset=${GPU_CHECK_PRESET:-tiny}; sizes=${GPU_CHECK_SIZES:-1,4}; limit=${GPU_CHECK_LIMIT:-32}
  csizes=${GPU_CHECK_COMPARE_SIZES:-1,4}; climit=(--limit "$limit")
else
  preset=${GPU_CHECK_PRESET:-gemma-2-2b-shape}; sizes=${GPU_CHECK_SIZES:-16,32,64,128,256,512}; limit=${GPU_CHECK_LIMIT:-930}
  csizes=${GPU_CHECK_COMPARE_SIZES:-1,16,64}; climit=()
fi

start=$(date +%s)
deadline=$((start + budget))
steps=$out/steps.tsv
printf 'step\trc\tseconds\ttimeout\trequired\tcommand\n' >"$steps"
{
  echo "started   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "mode      device=$device quick=$quick budget=${budget}s"
  echo "saecli    ${saecli[*]}"
  echo "python    $py"
  echo "data      $data"
  echo "preset    $preset (bench, probe); compare: tiny"
  echo "sizes     bench $sizes, limit $limit; compare $csizes"
  echo "host      $(uname -srm), $(nproc) cores"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

failed=0
# step NAME TIMEOUT REQUIRED(1|0) CMD... : stdout to NAME.out, stderr to NAME.err, a line in steps.tsv.
step() {
  local name=$1 limit_s=$2 required=$3; shift 3
  local now left t0 t1 rc
  now=$(date +%s); left=$((deadline - now))
  ((left < limit_s)) && limit_s=$left
  printf '%s\n' "$*" >"$out/$name.cmd"
  if ((limit_s < 5)); then
    printf '%s\tskipped\t0\t0\t%s\t%s\n' "$name" "$required" "$*" >>"$steps"
    echo "== $name: skipped (budget spent)" >&2
    ((required)) && failed=1
    return 0
  fi
  echo "== $name (timeout ${limit_s}s): $*" >&2
  t0=$(date +%s.%N)
  timeout -k 15 "$limit_s" "$@" >"$out/$name.out" 2>"$out/$name.err" </dev/null
  rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$limit_s" "$required" "$*" >>"$steps"
  echo "   $name: exit $rc in ${secs}s" >&2
  # pytest exit 5 = no test carries the gpu mark: reported in summary.txt, not a failure.
  ((required && rc != 0)) && ! [[ $name == pytest-gpu && $rc == 5 ]] && failed=1
  return 0
}

export PYTHONUNBUFFERED=1

# 1. doctor: versions, devices, the memory estimate for the bench preset on the HB data.
step doctor 60 1 "${saecli[@]}" doctor --json --preset "$preset" --device "$device" --dtype bfloat16 --data "$data"

# 2. the GPU tests (pytest may be missing on the device machine: recorded as exit 127).
# --continue-on-collection-errors: a test module whose imports are missing there (hypothesis,
# ray) must not hide the GPU tests. Exit 5 = no test carries the gpu mark.
if "$py" -c 'import pytest' >/dev/null 2>&1; then
  step pytest-gpu 120 1 "$py" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests
else
  echo "pytest is not installed for $py" >"$out/pytest-gpu.err"; : >"$out/pytest-gpu.out"
  printf 'pytest-gpu\t127\t0\t0\t1\t%s -m pytest (not installed)\n' "$py" >>"$steps"; failed=1
fi

# 3. compare, embedded preset, built-in benchmark: float64 must pass at --atol 1e-6; the float32 and
# bfloat16 drift exits 1 by design (required=0).
step compare-float64 75 1 "${saecli[@]}" compare --json --device "$device" --dtype float64 --sizes "$csizes" "${climit[@]}"
step compare-float32 60 0 "${saecli[@]}" compare --json --device "$device" --dtype float32 --sizes "$csizes" "${climit[@]}"
step compare-bfloat16 60 0 "${saecli[@]}" compare --json --device "$device" --dtype bfloat16 --sizes "$csizes" "${climit[@]}"

# 4. bench on HB-1000; each size in a fresh process that builds the preset's random weights on
# --device. bench.json is written at the end: if a bench is cut by its timeout, summary.txt takes
# the sizes done from its stderr.
# bfloat16 is timed with and without the log-probability baselines; float32 with them only (time).
for dt in bfloat16 float32; do
  if [[ $dt == bfloat16 ]]; then bl=both; else bl=on; fi
  step "bench-$dt" 170 1 "${saecli[@]}" bench --preset "$preset" --data "$data" --limit "$limit" --sizes "$sizes" \
    --repeats 1 --no-sequential --baselines "$bl" --device "$device" --dtype "$dt" --out "$out/bench-$dt" --json
done

# 5. doctor --probe: load the preset and find the largest batch that fits, on the HB longest texts.
step doctor-probe 90 0 "${saecli[@]}" doctor --probe --json --preset "$preset" --device "$device" --dtype bfloat16 --data "$data"

echo "total     $(($(date +%s) - start)) s" >>"$out/env.txt"
"$py" "$root/scripts/gpu_check_summary.py" "$out" >"$out/summary.txt" 2>"$out/summary.err" \
  || { echo "summary failed, see $out/summary.err" >&2; cp "$steps" "$out/summary.txt"; }
cat "$out/summary.txt"
echo "gpu_check: results in $out" >&2
exit "$failed"
