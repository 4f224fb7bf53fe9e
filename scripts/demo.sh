#!/usr/bin/env bash
# Set everything up, then run the built-in demo (no data to download): source training, adaptation, Dice.
# Usage: bash scripts/demo.sh [DIR]   (default ./sfda_demo, replaced on each run; a DIR you name must be empty or new)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  exec .venv/bin/nnunet-sfda demo -o sfda_demo --overwrite
fi
exec .venv/bin/nnunet-sfda demo -o "$1"
