#!/usr/bin/env bash
# Serve the embedded default model (SmolLM2-135M) on 127.0.0.1:30000 with the OpenAI-compatible API.
# Arguments go to `jackfield serve` (e.g. --port 8080, --config jackfield.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -n "${PYTHON:-}" ]; then exec "$PYTHON" -m jackfield.cli serve "$@"; fi
exec .venv/bin/jackfield serve "$@"
