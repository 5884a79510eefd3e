#!/usr/bin/env bash
# The GPU check: the GPU test tier (tests/gpu) and `rayeffi bench precision --device cuda`.
#
# Runs with plain PyTorch: no Ray and no pydantic needed (tests that need a recipe config
# skip without pydantic; set RAYEFFI_WHEELS=DIR to install pydantic from wheels in DIR first).
# Budget: under 8 minutes on one H200 (the tier takes about a minute, the benchmark a few).
# Usage, from the repository root:  bash scripts/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to check; run it on a GPU machine" >&2
    exit 3
fi
if [ -n "${RAYEFFI_WHEELS:-}" ] && ! "$PYTHON" -c 'import pydantic' 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --find-links "$RAYEFFI_WHEELS" pydantic
fi
"$PYTHON" -c 'import torch; print(f"gpu_check: torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")'

status=0
timeout 240 "$PYTHON" -m pytest tests/gpu -q -rs -p no:cacheprovider || status=$?
timeout 240 "$PYTHON" -m rayeffi bench precision --device cuda ${1:-} || status=$?
exit "$status"
