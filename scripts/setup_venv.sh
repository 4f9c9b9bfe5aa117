#!/usr/bin/env bash
# Builds .venv from nothing; safe to run again (each step is skipped when already done).
# Why each odd step exists:
#  * torch==2.13.0 is the local CPU build; any other torch request (or torchaudio) pulls CUDA wheels.
#  * fairseq-fixed declares torchaudio as a dependency, so it (and our package) install with --no-deps
#    after its real needs; its C++/Cython build takes ~3 min, so the built wheel is cached outside
#    the checkout (FAIRSEQ_SUBNETS_WHEEL_CACHE, default ~/.cache/fairseq-subnets/wheels).
#  * espeak-ng (Debian) speaks the synthetic corpus; it is installed with apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
CACHE=${FAIRSEQ_SUBNETS_WHEEL_CACHE:-$HOME/.cache/fairseq-subnets/wheels}
PIP_QUIET=(-q -c constraints.txt)

if ! command -v espeak-ng >/dev/null 2>&1; then
  echo "[setup] installing espeak-ng with apt"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch 2.13.0 (CPU build)"
  "${PIP[@]}" install "${PIP_QUIET[@]}" torch==2.13.0
fi

echo "[setup] installing pinned dependencies"
"${PIP[@]}" install "${PIP_QUIET[@]}" setuptools wheel cython numpy scipy hydra-core omegaconf bitarray \
  sacrebleu regex scikit-learn cffi tqdm packaging pyyaml editdistance soundfile sentencepiece \
  safetensors matplotlib submitit pytest pytest-xdist Django

# Test-only: HF PEFT, the library the S2-LoRA paper used, which tests/test_tuners_peft.py checks
# our tuners against (the package never imports it); and transformers, the package's optional `hf`
# extra (HF export and import), which tests/test_hf_interop.py needs.
"${PIP[@]}" install "${PIP_QUIET[@]}" peft transformers

if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  WHEEL=$(ls "$CACHE"/fairseq_fixed-0.12.3.1-cp311-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHEEL" ]; then
    echo "[setup] building fairseq-fixed 0.12.3.1 (about 3 minutes, cached afterwards in $CACHE)"
    mkdir -p "$CACHE"
    TMP=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary=:all: --no-build-isolation fairseq-fixed==0.12.3.1 -d "$TMP"
    "${PIP[@]}" wheel -q --no-deps --no-build-isolation --no-cache-dir "$TMP"/fairseq_fixed-0.12.3.1.tar.gz -w "$TMP/out"
    mv "$TMP"/out/fairseq_fixed-*.whl "$CACHE"/
    rm -rf "$TMP"
    WHEEL=$(ls "$CACHE"/fairseq_fixed-0.12.3.1-cp311-*.whl | head -n 1)
  fi
  echo "[setup] installing $(basename "$WHEEL")"
  "${PIP[@]}" install -q --no-deps "$WHEEL"
fi

"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import fairseq, torch, fairseq_subnets; print('[setup] ready: torch', torch.__version__, 'fairseq', fairseq.__version__)"
