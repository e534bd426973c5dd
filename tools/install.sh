#!/usr/bin/env bash
# Create ./.venv (if missing) and install speech-kd with its pinned dependency set.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# pip >= 25 refuses a dependency of ESPnet (ci_sdr) that declares a direct URL in an extra;
# the pip that ships with Python 3.10-3.12 installs it.
if ! .venv/bin/python -c 'import sys, pip; sys.exit(int(pip.__version__.split(".")[0]) >= 25)'; then
    .venv/bin/python -m pip install -q "pip<25"
fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -c 'import kd, analysis, torch, torchaudio, transformers, espnet, jiwer, soundfile, espeakng_loader' \
    && echo "speech-kd installed in $(pwd)/.venv"
