#!/usr/bin/env bash
# Make the peer's own environment: DG-TTA (PyPI dg-tta 1.0.18) on nnunetv2 2.8.1 and the same torch as .venv, in
# .venv-dgtta (or $1). `nnunet-sfda benchmark --peers dgtta` runs nnunet_sfda/benchmark/dgtta_driver.py with its
# Python. dg-tta asks for nnunetv2 >= 2.2.1, < 3, so 2.8.1 resolves; wandb 0.16 (a dependency) fails to import
# with numpy 2 and DG-TTA uses it only when installed, so it is removed again. About 6.5 GB, a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-dgtta}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "nnunetv2==2.8.1" "numpy==2.4.6"
"$VENV/bin/python" -m pip install --quiet "dg-tta==1.0.18" "nnunetv2==2.8.1" "torch==2.14.1" "torchvision==0.29.1" \
  "numpy==2.4.6"
"$VENV/bin/python" -m pip uninstall --quiet -y wandb
"$VENV/bin/python" -c "import dg_tta, nnunetv2, torch; print('[setup_dgtta] dg-tta ready in $VENV, torch', torch.__version__)"
