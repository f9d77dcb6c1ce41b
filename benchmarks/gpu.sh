#!/usr/bin/env bash
# hipdisloc GPU benchmark: one command on a CUDA machine (one H100, 16 cores), under 8 minutes.
#
#   bash benchmarks/gpu.sh [OUT_DIR]    # OUT_DIR: else $OUT, else /tmp/hipdisloc-bench-gpu
#   bash benchmarks/gpu.sh --dry-run [OUT_DIR]    # same code on the CPU, tiny sizes, ~1 minute
#
# On this workplace's device machine: run(command="bash benchmarks/gpu.sh $OUT", carry=[".whl"],
# timeout_s=540); .whl/ (git-ignored) holds the wheels that machine lacks (see below).
#
# Measures (benchmarks/gpu_bench.py has the details): classifier training images/s at 224 px in
# bf16 autocast with channels_last, ResNet18, batch 64/128/256, plain loop and through Lightning
# (ratio, target >= 0.97); head stage and inference rates; what fp32 / bf16 / channels_last each
# give; data.on_device (batches made on the GPU: alone, and Lightning end to end, head and all
# layers) and 1, 2, 4 fold jobs sharing the GPU; the classification data pipeline with 16 workers (samples/s, per worker; target >= 2,000
# per worker) against flip + rotate alone (run after the loader, not before forking its workers);
# Lightning + our data module (pinned) + DislocationClassifier(channels_last=True) end to end;
# torch.compile; the projected wall time of the paper's 10-fold study (92,584 images, ~160,000
# oversampled samples per epoch, 10 folds x 20 epochs), naming the rate that bounds each phase.
#
# Writes OUT_DIR/results.json, OUT_DIR/results.txt (readable table), one JSON per section
# (written as each measurement is made) and OUT_DIR/log.txt. Each section runs in its own
# process under a time cap (timeout); a section that fails or runs out of time is reported and
# the next one runs. Uses the machine's `python3` (or $PYTHON) with PYTHONPATH at the repository
# root; when albumentations is missing and .whl/ holds the carried wheels (albumentations,
# albucore, pydantic and their needs), they are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."

dry=""
out_dir=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry="--dry-run" ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) out_dir="$arg" ;;
  esac
done
out_dir="${out_dir:-${OUT:-/tmp/hipdisloc-bench-gpu}}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
log="$out_dir/log.txt"
: > "$log"

PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

start=$(date +%s)
if [ -n "$dry" ]; then
  budget=${GPU_BENCH_BUDGET_S:-200}; reserve=10; floor=5
  caps=(train:60 ondevice:40 share:60 data:40 e2e:40 compile:40)
else
  budget=${GPU_BENCH_BUDGET_S:-450}; reserve=20; floor=30
  caps=(train:120 ondevice:70 share:80 data:60 e2e:60 compile:60)
fi

say() { echo "[$(date +%T) +$(( $(date +%s) - start ))s] $*" | tee -a "$log"; }

if ! "$PY" -c "import albumentations" >/dev/null 2>&1; then
  if [ -d .whl ]; then
    say "installing the carried wheels from .whl/ into /tmp/site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$log" 2>&1; then
      export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
      say "wheel install FAILED (see log); sections that need albumentations will fail"
    fi
  else
    say "albumentations is missing and there is no .whl/: sections that need it will fail"
  fi
fi
say "python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1)"

status=""
for entry in "${caps[@]}"; do
  name="${entry%%:*}"; cap="${entry##*:}"
  left=$(( budget - ($(date +%s) - start) - reserve ))
  limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt "$floor" ]; then
    say "SKIP $name: ${left}s of the ${budget}s budget left"
    status="$status $name=skipped"
    continue
  fi
  say "START $name (cap ${limit}s)"
  timeout -k 10 "$limit" "$PY" -m benchmarks.gpu_bench "$name" --out "$out_dir" $dry \
    2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  say "END $name: exit $rc$([ "$rc" = 124 ] && echo ' (stopped by its cap)')"
  status="$status $name=$rc"
done

say "report"
timeout -k 5 "$reserve" "$PY" -m benchmarks.gpu_bench report --out "$out_dir" $dry \
  --status "${status# }" 2>&1 | tee -a "$log"
say "done: $out_dir/results.txt, $out_dir/results.json"
