#!/usr/bin/env bash
# Everything the GPU needs checked, in one call on a CUDA machine (from anywhere):
#   bench/gpu_check.sh                # PYTHON=/path/to/python to use another interpreter
# 1. `pytest -m gpu` (flash SDPA, device syncs, bf16, activation checkpointing memory);
# 2. BASE, bf16, 15.6 s crops: the largest batch that fits (tried from large to small), against HF;
# 3. LARGE the same way. Every table and JSON line goes to stdout and to $LOG.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
LOG=${LOG:-bench/gpu_check.log}
export PYTHONPATH=$PWD/src
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }

say "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null)"
"$PY" -m pytest -q -m gpu tests 2>&1 | tee -a "$LOG"

fits() {  # one short w2vkit-only run: does this batch fit in memory?
  "$PY" bench/train_step.py --preset "$1" --batch "$2" --seconds 15.6 --device cuda --dtype bf16 \
    --rounds 1 --steps 1 --warmup 1 >/dev/null 2>&1
}

bench() {  # preset, then batch sizes to try, largest first
  local preset=$1; shift
  for batch in "$@"; do
    if fits "$preset" "$batch"; then
      say "== $preset: largest batch that fits: $batch x 15.6 s"
      # HF may not fit where w2vkit does: then the next smaller batch for the comparison.
      "$PY" bench/train_step.py --preset "$preset" --batch "$batch" --seconds 15.6 \
        --device cuda --dtype bf16 --compare hf --rounds 3 --steps 10 2>&1 | tee -a "$LOG" && return
      say "== $preset: HF did not run at batch $batch; w2vkit alone, then both one size down"
      "$PY" bench/train_step.py --preset "$preset" --batch "$batch" --seconds 15.6 \
        --device cuda --dtype bf16 --rounds 3 --steps 10 2>&1 | tee -a "$LOG"
    fi
  done
  say "== $preset: no batch size fit"
}

bench base 96 64 48 32 24 16 12 8 4
bench large 32 24 16 12 8 4 2
