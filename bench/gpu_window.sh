#!/usr/bin/env bash
# Every GPU figure in one borrowed window (about 15 minutes of device time, no network):
#   bash bench/gpu_window.sh OUT_DIR               after `make gpu-bundle` (.gpu-bundle/ travels along)
#   bash bench/gpu_window.sh --rehearsal OUT_DIR   the same stages on CPU, tiny shapes (bench/gpu_rehearsal.sh)
# Installs the bundle's wheels into a temporary folder (`pip install --no-index --target`), uses the
# machine's own python3 and torch, and runs each stage under its own `timeout`, all within WINDOW_S
# seconds (default 470, under 8 minutes). Each stage writes OUT_DIR/<stage>.out and .err, one JSON
# line to OUT_DIR/results.jsonl and a section of OUT_DIR/summary.md:
#   versions     python, torch, CUDA, transformers, nvidia-smi
#   base_fit     the largest BASE bf16 batch of 15.6 s crops that fits (one process, OOM caught)
#   base         BASE at that batch against HF Wav2Vec2ForPreTraining: audio-s/s, MFU, top kernels
#   pytest_gpu   `pytest -m gpu`: flash attention, bf16, one sync per update, conv norms, host draws
#   large        LARGE at LARGE_BATCH, without and (large_ckpt) with activation checkpointing
#   torchrun     `torchrun --standalone --nproc_per_node 1 -m w2vkit pretrain` (NCCL DDP) on a FLAC
#                corpus made here: audio-s/s, data-wait fraction, a checkpoint written
#   extract      `w2vkit extract` throughput at batch 1 and larger batches
#   base_compile BASE with train.compile's torch.compile (inductor; the rehearsal's aot_eager skips
#                code generation), last: it may not finish
set -uo pipefail
REHEARSAL=0
if [ "${1:-}" = "--rehearsal" ]; then REHEARSAL=1; shift; fi
OUT=${1:?usage: bench/gpu_window.sh [--rehearsal] OUT_DIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-$ROOT/.gpu-bundle}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RESULTS=$OUT/results.jsonl
SUMMARY=$OUT/summary.md
: >"$RESULTS"

if [ "$REHEARSAL" = 1 ]; then  # every stage, CPU-sized
  DEVICE=cpu DTYPE=fp32 CROP=1 BASE=tiny LARGE=tiny BASE_BATCHES="4 2" LARGE_BATCH=2
  STEPS=1 CONFIG=tiny CORPUS="12 2" TRAIN_STEPS=4 EXTRACT="--preset tiny --files 6 --max-seconds 3"
  SCALE=(data.max_batch_samples=64000 train.log_interval=2) COMPILE_BACKEND=aot_eager ROUNDS=1
  SLOW=3  # a shared 2-core CPU starts python, torch and transformers slowly: longer stage limits
  WINDOW_S=${WINDOW_S:-1500}
else
  DEVICE=cuda DTYPE=bf16 CROP=15.6 BASE=base LARGE=large BASE_BATCHES="128 96 80 64 48 32 16 8"
  LARGE_BATCH=${LARGE_BATCH:-16} STEPS=5 CONFIG=base_ls960 CORPUS="96 16" TRAIN_STEPS=60
  EXTRACT="--preset base --files 64 --max-seconds 20"
  SCALE=(train.log_interval=20) COMPILE_BACKEND=inductor ROUNDS=2 SLOW=1
fi
WINDOW_S=${WINDOW_S:-470}  # the whole window, under 8 minutes
DEADLINE=$((SECONDS + WINDOW_S))
BENCH=("$PY" bench/train_step.py --seconds "$CROP" --device "$DEVICE" --dtype "$DTYPE")

{
  echo "# GPU window $(date -u +%FT%TZ)$([ "$REHEARSAL" = 1 ] && echo ' (rehearsal, CPU)')"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); results.jsonl has one JSON line a stage."
} >"$SUMMARY"

# record STAGE RC SECONDS: the stage's JSON line (its own last JSON line of output as "result") and
# its section of the summary (the output's last lines; stderr's too when it failed).
record() {
  "$PY" - "$OUT" "$1" "$2" "$3" <<'PYEOF'
import json, sys
from pathlib import Path
out, stage, rc, secs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
text = (out / f"{stage}.out").read_text(errors="replace") if (out / f"{stage}.out").exists() else ""
err = (out / f"{stage}.err").read_text(errors="replace") if (out / f"{stage}.err").exists() else ""
result = None
for line in reversed(text.splitlines()):
    if line.startswith("{"):
        try:
            result = json.loads(line)
            break
        except ValueError:
            pass
status = {0: "ok", 3: "w2vkit ok, a peer failed", 124: "timed out", 137: "killed (timeout)",
          -1: "skipped: window spent"}
record = {"stage": stage, "rc": rc, "status": status.get(rc, "failed"), "seconds": round(secs, 1),
          "result": result}
with open(out / "results.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
tail = [l for l in text.splitlines() if not l.startswith("{")][-25:]
with open(out / "summary.md", "a") as f:
    f.write(f"\n## {stage}: {record['status']} (exit {rc}, {secs:.0f} s)\n\n```\n")
    f.write("\n".join(tail) + "\n")
    if rc != 0:
        f.write("--- stderr (last lines)\n" + "\n".join(err.splitlines()[-20:]) + "\n")
    f.write("```\n")
PYEOF
}

# stage NAME LIMIT_S COMMAND...: run it under `timeout`, within what is left of the window.
stage() {
  local name=$1 limit=$(($2 * SLOW)) left=$((DEADLINE - SECONDS)) start=$SECONDS rc
  shift 2
  if [ "$left" -lt 15 ]; then
    echo "window spent before this stage" >"$OUT/$name.out"
    record "$name" -1 0
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit} s)" >&2
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  rc=$?
  record "$name" "$rc" $((SECONDS - start))
}

# 1. The bundle, beside the machine's own packages (its torch included).
SITE=$WORK/site
stage install 60 "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$BUNDLE"/*.whl
export PYTHONPATH=$SITE
stage versions 30 bash -c '"$0" -c "
import json, platform, torch, transformers, soundfile, soxr
cuda = torch.cuda.is_available()
print(json.dumps({\"python\": platform.python_version(), \"torch\": torch.__version__,
    \"cuda\": torch.version.cuda, \"transformers\": transformers.__version__,
    \"soundfile\": soundfile.__version__, \"libsndfile\": soundfile.__libsndfile_version__,
    \"gpu\": torch.cuda.get_device_name() if cuda else None,
    \"bf16\": cuda and torch.cuda.is_bf16_supported()}))
"; nvidia-smi || echo "no nvidia-smi"' "$PY"

# 2. BASE: the largest batch, then that batch against HF (exit 3: HF failed, w2vkit's row stands).
stage base_fit 90 "${BENCH[@]}" --preset "$BASE" --find-batch $BASE_BATCHES
BATCH=$("$PY" -c "import json,sys; print(json.loads(sys.argv[1])['result']['batch'] or 1)" \
  "$(tail -n 1 "$RESULTS")" 2>/dev/null || echo 1)
stage base 150 "${BENCH[@]}" --preset "$BASE" --batch "$BATCH" --compare hf --rounds "$ROUNDS" \
  --steps "$STEPS" --profile "$OUT/base_kernels.txt"

# 3. The GPU tests (on CPU all skip: the rehearsal checks they collect and import).
stage pytest_gpu 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_readiness.py \
  tests/test_model.py tests/test_dataset.py tests/test_extract_batched.py

# 4. LARGE at one batch, without and with activation checkpointing (peak memory and speed).
stage large 75 "${BENCH[@]}" --preset "$LARGE" --batch "$LARGE_BATCH" --rounds 1 --steps "$STEPS"
stage large_ckpt 75 "${BENCH[@]}" --preset "$LARGE" --batch "$LARGE_BATCH" --rounds 1 \
  --steps "$STEPS" --checkpointing

# 5. torchrun, one process (DDP over NCCL on GPU, gloo on CPU), on FLAC files written here.
corpus_and_train() {
  set -e
  read -r files seconds <<<"$CORPUS"
  "$PY" - "$WORK/corpus" "$files" "$seconds" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
import soundfile as sf
folder, files, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(files):  # tones in noise, lengths around `seconds`
    n = int(16000 * seconds * rng.uniform(0.9, 1.1))
    t = np.arange(n) / 16000
    wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
    sf.write(folder / f"{i:03d}.flac", wav.astype(np.float32), 16000)
PYEOF
  "$PY" -m w2vkit manifest "$WORK/corpus" --dest "$WORK/manifest" --valid-percent 0.1
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m w2vkit pretrain "$CONFIG" \
    "data.manifest_dir=$WORK/manifest" "train.out_dir=$WORK/run" "train.max_steps=$TRAIN_STEPS" \
    train.save_interval_steps=0 train.validate_interval_steps=0 "train.device=$DEVICE" \
    "train.precision=$DTYPE" "${SCALE[@]}"
  "$PY" - "$WORK/run" <<'PYEOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
lines = [json.loads(l) for l in (run / "train_log.jsonl").read_text().splitlines()]
train = [l for l in lines if l.get("split") == "train"]
last = train[-1]
print(json.dumps({"num_updates": last.get("num_updates"), "audio_sec_per_sec": last.get("audio_sec_per_sec"),
    "data_wait_frac": last.get("data_wait_frac"), "loss": last.get("loss"),
    "checkpoint": sorted(p.name for p in run.glob("checkpoint*.pt"))}))
PYEOF
}
export -f corpus_and_train
export PY WORK CORPUS CONFIG TRAIN_STEPS DEVICE DTYPE
export SCALE_ARGS="${SCALE[*]}"
stage torchrun 150 bash -c 'SCALE=($SCALE_ARGS); corpus_and_train'

# 6. Feature extraction at batch 1 and larger batches.
stage extract 60 "$PY" bench/extract.py $EXTRACT --device "$DEVICE" --dtype "$DTYPE" \
  --batch-sizes 1 8 32 --repeats 1 --warmup 1

# 7. Compiled BASE (inductor), last: compilation may take most of what is left.
stage base_compile 240 "${BENCH[@]}" --preset "$BASE" --batch "$BATCH" --rounds 1 --steps "$STEPS" \
  --compile --compile-backend "$COMPILE_BACKEND"
echo "== done in ${SECONDS} s: $SUMMARY" >&2
