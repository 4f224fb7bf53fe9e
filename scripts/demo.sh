#!/usr/bin/env bash
# Set everything up, then run the built-in demo (no data to download): source training, adaptation, Dice.
# Usage: bash scripts/demo.sh [DIR]   (default ./sfda_demo, which each run replaces with a fresh demo; a DIR you name
# must be new or empty). A folder the demo did not make is never replaced: the demo stops with an error instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then
  echo "[demo] running in ./sfda_demo (replaces the folder of an earlier demo run; pass a DIR to keep it)"
  exec .venv/bin/nnunet-sfda demo -o sfda_demo --overwrite
fi
exec .venv/bin/nnunet-sfda demo -o "$1"
