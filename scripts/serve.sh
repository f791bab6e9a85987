#!/usr/bin/env bash
# Serve the embedded default model (SmolLM2-135M) on 127.0.0.1:30000 with the OpenAI-compatible API.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec jackfield serve "$@"
