#!/usr/bin/env bash
# The GPU window rehearsed on this CPU machine: a fresh venv holding only what the borrowed machine
# has (a CPU torch from the local disk standing in for its CUDA one, then its package list from
# PyPI), the bundle built for this interpreter, then `bench/gpu_window.sh --rehearsal`, which
# installs the bundle with --no-index and runs every stage with tiny shapes.
#   bench/gpu_rehearsal.sh WORK_DIR OUT_DIR     (TORCH_WHEELS: folder of the torch wheel, /opt/wheels)
set -euo pipefail
WORK=${1:?usage: bench/gpu_rehearsal.sh WORK_DIR OUT_DIR}
OUT=${2:?usage: bench/gpu_rehearsal.sh WORK_DIR OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MACHINE_PACKAGES=(transformers numpy scipy scikit-learn pytest pytest-timeout safetensors tqdm rich
  matplotlib pyyaml fsspec)
mkdir -p "$WORK"
python3 -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
"$VPY" -m pip install -q --find-links "${TORCH_WHEELS:-/opt/wheels}" "$TORCH_SPEC"
"$VPY" -m pip install -q "${MACHINE_PACKAGES[@]}" "$TORCH_SPEC" --find-links "${TORCH_WHEELS:-/opt/wheels}"
PYVER=$("$VPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYVER=$PYVER PYTHON=$VPY "$ROOT/bench/gpu_bundle.sh" "$WORK/bundle"
PYTHON=$VPY BUNDLE=$WORK/bundle bash "$ROOT/bench/gpu_window.sh" --rehearsal "$OUT"
