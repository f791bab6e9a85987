#!/usr/bin/env bash
# Online latency on the GPU (issue #28's goals), 8B-shaped dummy model, one run:
#   1. `jackfield bench latency`, batch 1, 1024 in / 256 out: the prefill time and the decode step
#      that the serving goals compare with;
#   2. `jackfield serve` (late launch on, the default), `jackfield bench serving` random 1024 in /
#      256 out at 1 and 4 req/s, and SGLang's CI point (random 4096 in / 2048 out, lengths uniform
#      from 1, 1 req/s);
#   3. the same server with --disable-late-launch at 1 and 4 req/s (the A/B).
# Every report holds `first_token_stages_ms`, the server's own account of TTFT by stage.
# The server gets the tokenizer padded to the model's vocabulary (pad_tokenizer.py): with the
# borrowed one, random ids past its end decode to no text and the client would time them as waits.
# Usage: bash benchmarks/gpu_latency.sh OUTDIR STAMP [SECONDS_AVAILABLE]
set -uo pipefail
OUTDIR=$1; STAMP=$2; END_S=${3:-560}
TOK=${BENCH_TOKENIZER:-.gpu_carry/tok}  # not JACKFIELD_*: those are read as settings by serve
PORT=30123
MODEL=${BENCH_MODEL:-benchmarks/configs/llama-3.1-8b.json}
# the server spells every id of the dummy model (benchmarks/pad_tokenizer.py); the client keeps TOK
SERVE_TOK=$(mktemp -d)/tok
python3 benchmarks/pad_tokenizer.py "$TOK" "$SERVE_TOK" --model-config "$MODEL" || exit 1
T0=$SECONDS
jf() { python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())' "$@"; }
need() { [ $((END_S - (SECONDS - T0))) -ge "$1" ]; }  # at least $1 seconds left
serve() {  # $1: name, rest: extra flags
  local name=$1; shift
  jf serve --model "$MODEL" --load-format dummy --tokenizer "$SERVE_TOK" --port $PORT \
    --max-total-tokens 400000 --max-running-requests 256 "$@" > "$OUTDIR/serve-$name-$STAMP.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0
    kill -0 $SERVER 2>/dev/null || { echo "server died:"; tail -30 "$OUTDIR/serve-$name-$STAMP.log"; return 1; }
    sleep 1
  done
  return 1
}
bench() {  # $1: name, $2 in, $3 out, $4 range ratio, $5 prompts, $6 rate
  timeout -k 3 250 python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())' bench serving \
    --base-url "http://127.0.0.1:$PORT" --backend openai --dataset random --random-input-len "$2" \
    --random-output-len "$3" --random-range-ratio "$4" --num-prompts "$5" --request-rate "$6" --tokenizer "$TOK" \
    --disable-tqdm --output-file "$OUTDIR/$1-$STAMP.json" > "$OUTDIR/$1-$STAMP.txt" 2>&1
  python3 - "$OUTDIR/$1-$STAMP.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
stages = {k: round(v, 2) for k, v in r["first_token_stages_ms"].items()}
print(sys.argv[2], "ok", r["completed"], "failed", r["failed"], "TTFT p50 %.1f p99 %.1f ms" % (r["median_ttft_ms"], r["p99_ttft_ms"]),
      "TPOT p50 %.2f ms" % r["median_tpot_ms"], "ITL p50 %.2f ms" % r["median_itl_ms"], "stages", stages)
PY
}
stop() { kill -TERM $SERVER; wait $SERVER; }
jf bench latency --model "$MODEL" --load-format dummy --batch-size 1 --input-len 1024 \
  --output-len 256 --output-file "$OUTDIR/latency-1024-$STAMP.json" > "$OUTDIR/latency-1024-$STAMP.txt" 2>&1
python3 - "$OUTDIR/latency-1024-$STAMP.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
j = m["results"][0]["jackfield"]
print(m["attention_backend"], "prefill %.2f ms" % (j["prefill_s"] * 1000), "decode %.1f tok/s (%.2f ms a step)"
      % (j["decode_tok_per_s"], 1000 / j["decode_tok_per_s"]))
PY
if serve late; then
  need 60 && bench late-rate1 1024 256 1.0 60 1
  need 40 && bench late-rate4 1024 256 1.0 120 4
  need 130 && bench late-sglang-ci 4096 2048 0.0 100 1
  stop
fi
if need 150 && serve early --disable-late-launch; then
  need 60 && bench early-rate1 1024 256 1.0 60 1
  need 40 && bench early-rate4 1024 256 1.0 120 4
  stop
fi
