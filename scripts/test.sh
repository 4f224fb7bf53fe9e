#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit tests and the end-to-end run of the nnU-Net commands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two pytest-xdist workers (worksteal balances the long end-to-end tests; the README gives the measured time);
# SFDA_TEST_WORKERS=0 runs everything in this process
.venv/bin/python -m pytest -q -n "${SFDA_TEST_WORKERS:-2}" --dist worksteal "$@"
