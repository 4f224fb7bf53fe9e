#!/usr/bin/env bash
# Set everything up, then run the built-in demo (no data to download): source training, adaptation, Dice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nnunet-sfda demo -o "${1:-sfda_demo}" --overwrite
