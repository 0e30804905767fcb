#!/usr/bin/env bash
# Create .venv and install searchprune with its dev tools.
# Torch: when the venv has none, take the local CPU build (torch==2.13.0) instead of
# PyPI's multi-GB CUDA default; pyproject only asks for a range, so a user's own
# (GPU) build is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
# Pin the torch already there, so that torchvision (dev and vision extras) comes in the
# build that matches it instead of pulling a newer torch.
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]" "torch==$TORCH_VERSION"
