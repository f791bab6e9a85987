#!/usr/bin/env bash
# Run the CPU test suite in the project's virtual environment (GPU tests are marked `gpu` and skip
# without CUDA). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-.venv/bin/python}" -m pytest -q "$@"
