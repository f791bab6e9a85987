#!/usr/bin/env bash
# API fuzzing with a long budget: schemathesis (every phase but stateful, every check, every route of
# /openapi.json) against `jackfield serve` on the embedded model; the summary (cases tried, failures
# by check, 5xx found) goes to benchmarks/results/fuzz-api-<date>.json. The CPU suite runs the same
# with a small budget (tests/server/test_fuzz_api.py).
#
#   bash benchmarks/fuzz_api.sh [MAX_EXAMPLES=100] [MAX_TIME_S=1800] [SEED=0] [-- extra serve flags]
# (MAX_EXAMPLES bounds the examples and coverage phases, which test every operation; MAX_TIME_S the
# fuzzing phase)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
EXAMPLES=${1:-100}; MAX_TIME=${2:-1800}; SEED=${3:-0}
shift $(( $# < 3 ? $# : 3 )); [ "${1:-}" = "--" ] && shift
PORT=${PORT:-31999}
OUT=$PWD/benchmarks/results/fuzz-api-$(date -u +%Y%m%d-%H%M).json
LOG=$(mktemp -t jackfield-fuzz-XXXX.log)
WORK=$(mktemp -d -t jackfield-fuzz-XXXX)
# The request timeout bounds the generations the fuzzer asks for (408 is an accepted answer).
"$PY" -m jackfield.cli serve --port "$PORT" --no-warmup --context-length 2048 --request-timeout 3 "$@" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 1
done
"$PY" tests/server/fuzz/run.py "http://127.0.0.1:$PORT" --max-examples "$EXAMPLES" --max-time "$MAX_TIME" \
  --seed "$SEED" --report "$WORK/schemathesis.json" --output "$OUT"
echo "summary written to $OUT (schemathesis report: $WORK/schemathesis.json, server log: $LOG)"
