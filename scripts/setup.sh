#!/usr/bin/env bash
# Create .venv in the repository root and install nnunet-sfda with its test dependencies.
# torch/torchvision are pinned to a consistent pair: a CPU-only torch next to a CUDA torchvision breaks the import
# of every trainer other than nnUNetTrainer (see the README, "Install").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
  # PyPI's torch 2.14.1 for x86_64 is the CUDA build: about 6 GB in .venv (it runs on the CPU too)
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1: the CUDA build, about 6 GB in .venv, a few minutes"
  python -m pip install --progress-bar on "torch==2.14.1" "torchvision==0.29.1" 2>&1 \
    | grep -E --line-buffered "^(Collecting|Processing|Downloading|Installing|Successfully|ERROR)" || true
  python -c "import torch, torchvision" || { echo "[setup] torch/torchvision did not install" >&2; exit 1; }
fi
echo "[setup] installing nnunet-sfda and its dependencies"
python -m pip install --quiet -e ".[test]"
echo "[setup] done: $(python -c 'import nnunetv2, nnunet_sfda, torch; print("nnunet_sfda", nnunet_sfda.__version__, "| torch", torch.__version__)')"
