#!/usr/bin/env bash
# One evaluation of a tiny random Stable Diffusion pipeline on CUDA in fp16; prints the fine-tune's
# seconds per step, the evaluation's time by phase and the peak GPU memory (experiments/gpu_check.py).
#   experiments/gpu_check.sh            # after `make install`; extra flags go to gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
exec "$PY" experiments/gpu_check.py --device cuda --precision fp16 "$@"
