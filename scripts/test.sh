#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit tests and the end-to-end run of the nnU-Net commands).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers (pytest-xdist; worksteal balances the long end-to-end tests): much of the time is spent in nnU-Net
# subprocesses starting up (imports, planning, file I/O), which overlap on two cores; SFDA_TEST_WORKERS=0 runs
# everything in this process
.venv/bin/python -m pytest -q -n "${SFDA_TEST_WORKERS:-2}" --dist worksteal "$@"
