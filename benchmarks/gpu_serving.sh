#!/usr/bin/env bash
# Serving benchmark on the GPU: jackfield serve (8B-shaped dummy model, SmolLM2 tokenizer for text),
# then `jackfield bench serving` at request rates 4, 8 and 16 req/s, random 1024 in / 256 out.
set -uo pipefail
OUTDIR=$1; STAMP=$2
TOK=${BENCH_TOKENIZER:-.gpu_carry/tok}  # not JACKFIELD_*: those are read as settings by serve
# the server spells every id of the dummy model (benchmarks/pad_tokenizer.py); the client keeps TOK
SERVE_TOK=$(mktemp -d)/tok
python3 benchmarks/pad_tokenizer.py "$TOK" "$SERVE_TOK" --model-config benchmarks/configs/llama-3.1-8b.json || exit 1
PORT=30123
python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())' serve --model benchmarks/configs/llama-3.1-8b.json \
  --load-format dummy --tokenizer "$SERVE_TOK" --port $PORT --max-total-tokens 400000 --max-running-requests 256 \
  > "$OUTDIR/serve-$STAMP.log" 2>&1 &
SERVER=$!
for i in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "server died:"; tail -30 "$OUTDIR/serve-$STAMP.log"; exit 1; }
  sleep 1
done
for rate in 4 8 16; do
  python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())' bench serving \
    --base-url "http://127.0.0.1:$PORT" --backend openai --dataset random --random-input-len 1024 \
    --random-output-len 256 --random-range-ratio 1.0 --num-prompts $((rate * 15)) --request-rate $rate \
    --tokenizer "$TOK" --disable-tqdm --output-file "$OUTDIR/serving-rate$rate-$STAMP.json" | tail -22
done
kill -TERM $SERVER; wait $SERVER
