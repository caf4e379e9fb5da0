#!/usr/bin/env bash
# The wheels w2vkit needs on the borrowed GPU machine, which has Python 3.12, torch, transformers,
# numpy, scipy, scikit-learn, pytest, safetensors, tqdm, rich, matplotlib, pyyaml and fsspec, but no
# network: soundfile, soxr, jiwer and their dependencies (cffi, pycparser, rapidfuzz, click), and
# w2vkit's own wheel. `make gpu-bundle` writes them to .gpu-bundle/ (git-ignored; the run tool
# carries it with the working tree, 64 MiB in all), where `bench/gpu_window.sh` installs them from.
#   bench/gpu_bundle.sh [DIR]       PYVER=3.11 for another interpreter (the CPU rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu-bundle}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
PACKAGES=(soundfile soxr cffi pycparser jiwer rapidfuzz click)
rm -rf "$DIR"
mkdir -p "$DIR"
# manylinux wheels of every glibc generation the machine's (2.28+) loads; no source builds there.
"$PY" -m pip download -q --only-binary=:all: --no-deps --implementation cp \
  --python-version "$PYVER" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 -d "$DIR" "${PACKAGES[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DIR" .
du -sh "$DIR"
