#!/usr/bin/env bash
# Offline throughput on a 2-GPU machine: one GPU vs data parallel 2 vs tensor parallel 2 (issue 30).
# The 8B-shaped dummy model, 256 requests of 512 random prompt tokens and 256 output tokens (EOS
# ignored), all sent at once (`bench serving --request-rate inf`) to `jackfield serve` in each layout,
# so the three share the HTTP path; `jackfield bench offline` on one GPU (no server) is the reference
# for what the server path costs. Each run writes a JSON report; the table at the end compares them.
#
# Usage on the device (2 GPUs):
#   bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/dp_vs_tp.sh [LAYOUT...]
# LAYOUT: offline1 gpu1 dp2 tp2 (default: all four, about 6 min on 2 x H100). tp2 needs --tp-size
# (tensor parallelism); where `jackfield serve` has no such flag it is skipped with a note.
# Environment (no JACKFIELD_ prefix: those are settings): BENCH_TOKENIZER (default .gpu_carry/tok, a tokenizer for the random prompts);
# for a smoke run elsewhere, BENCH_MODEL (a config.json for dummy weights, default the 8B
# shape) and BENCH_SHAPE ("prompts input output", default "256 512 256").
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-benchmarks/results}
mkdir -p "$OUTDIR"
STAMP=$(date -u +%Y%m%d-%H%M)
TOK=${BENCH_TOKENIZER:-.gpu_carry/tok}
CFG=${BENCH_MODEL:-benchmarks/configs/llama-3.1-8b.json}
read -r NUM IN_LEN OUT_LEN <<< "${BENCH_SHAPE:-256 512 256}"
PORT=30124
LAYOUTS=${*:-offline1 gpu1 dp2 tp2}
JF=(python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())')
MODEL=(--model "$CFG" --load-format dummy --tokenizer "$TOK" --max-running-requests 256)

serve_and_bench() {  # $1: layout name, $2: CUDA_VISIBLE_DEVICES, rest: extra serve flags
  local name=$1 devices=$2; shift 2
  local log="$OUTDIR/dp-vs-tp-serve-$name-$STAMP.log"
  echo "== $name: jackfield serve ${MODEL[*]} $* (CUDA_VISIBLE_DEVICES=$devices)"
  CUDA_VISIBLE_DEVICES=$devices "${JF[@]}" serve "${MODEL[@]}" --port $PORT "$@" > "$log" 2>&1 &
  local server=$!
  for _ in $(seq 1 400); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $server 2>/dev/null || { echo "server died:"; tail -30 "$log"; return 1; }
    sleep 1
  done
  "${JF[@]}" bench serving --base-url "http://127.0.0.1:$PORT" --backend jackfield --dataset random \
    --random-input-len $IN_LEN --random-output-len $OUT_LEN --random-range-ratio 1.0 --num-prompts $NUM \
    --request-rate inf --tokenizer "$TOK" --disable-tqdm --output-file "$OUTDIR/dp-vs-tp-$name-$STAMP.json" | tail -22
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^jackfield_(dp_routed|dp_cache_hit|cache_hit_rate)' \
    > "$OUTDIR/dp-vs-tp-metrics-$name-$STAMP.txt"
  kill -TERM $server; wait $server
}

for layout in $LAYOUTS; do
  case $layout in
    offline1)
      echo "== offline1: jackfield bench offline (one GPU, no server)"
      CUDA_VISIBLE_DEVICES=0 "${JF[@]}" bench offline --model "$CFG" --load-format dummy --max-running-requests 256 --num-prompts $NUM \
        --input-len $IN_LEN --output-len $OUT_LEN --output-file "$OUTDIR/dp-vs-tp-offline1-$STAMP.json" | tail -5 ;;
    gpu1) serve_and_bench gpu1 0 ;;
    dp2) serve_and_bench dp2 0,1 --dp-size 2 ;;
    tp2)
      if "${JF[@]}" serve --help | grep -q -- "--tp-size"; then
        serve_and_bench tp2 0,1 --tp-size 2
      else
        echo "== tp2 skipped: this build of jackfield serve has no --tp-size"
      fi ;;
    *) echo "unknown layout $layout (offline1 gpu1 dp2 tp2)"; exit 2 ;;
  esac
done

python3 - "$OUTDIR" "$STAMP" <<'EOF'
import json, sys
from pathlib import Path

out, stamp = Path(sys.argv[1]), sys.argv[2]
rows = []
for name in ("offline1", "gpu1", "dp2", "tp2"):
    path = out / f"dp-vs-tp-{name}-{stamp}.json"
    if not path.exists():
        continue
    data = json.loads(path.read_text())
    m = data.get("metrics", data)
    tok_s = m.get("output_tok_per_s") or m.get("output_throughput")
    rows.append((name, tok_s, m.get("total_s") or m.get("duration_s"), m.get("failed", 0)))
base = next((t for n, t, _, _ in rows if n == "gpu1" and t), None)
print(f"{'layout':<10}{'output tok/s':>14}{'seconds':>10}{'vs gpu1':>10}{'failed':>8}")
for name, tok_s, secs, failed in rows:
    ratio = f"{tok_s / base:.2f}x" if base and tok_s else "-"
    print(f"{name:<10}{tok_s or 0:>14.0f}{secs or 0:>10.1f}{ratio:>10}{failed:>8}")
EOF
