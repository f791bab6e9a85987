#!/usr/bin/env bash
# Run the CPU test suite (GPU tests are marked `gpu` and skip without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
