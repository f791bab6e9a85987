#!/usr/bin/env bash
# Soak with faults: `jackfield serve` (extra flags after --), then `jackfield bench soak` against it for
# MINUTES at CONCURRENCY; the report goes to benchmarks/results/NAME-<date>.json and the server is
# stopped with SIGTERM (a drain) at the end. Exit status: the soak's (1 if a request was lost or
# duplicated or KV leaked).
#
#   bash benchmarks/soak.sh MINUTES CONCURRENCY NAME [-- serve flags]
#   bash benchmarks/soak.sh 30 8 cpu-soak                          # the recorded CPU run
#   bash benchmarks/soak.sh 8 64 gpu-soak -- --model benchmarks/configs/llama-3.1-8b.json \
#        --load-format dummy --tokenizer .gpu_carry/tok --max-running-requests 256
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MINUTES=${1:?minutes}; CONCURRENCY=${2:?concurrency}; NAME=${3:?name}
shift 3; [ "${1:-}" = "--" ] && shift
PORT=${PORT:-30125}
STAMP=$(date -u +%Y%m%d-%H%M)
LOG=benchmarks/results/$NAME-$STAMP-serve.log
"$PY" -m jackfield.cli serve --port "$PORT" "$@" >"$LOG" 2>&1 &
SERVER=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -30 "$LOG"; exit 1; }
  sleep 1
done
"$PY" -m jackfield.cli bench soak --base-url "http://127.0.0.1:$PORT" --minutes "$MINUTES" \
  --concurrency "$CONCURRENCY" --output-file "benchmarks/results/$NAME-$STAMP.json" ${SOAK_FLAGS:-}
CODE=$?
kill -TERM $SERVER; wait $SERVER
echo "server exit code $? (log: $LOG)"
exit $CODE
