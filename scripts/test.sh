#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit tests and the end-to-end run of the nnU-Net commands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
