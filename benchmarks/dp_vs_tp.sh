#!/usr/bin/env bash
# Offline throughput on a 2-GPU machine: one GPU vs data parallel 2 vs tensor parallel 2 (issue 30).
# The 8B-shaped dummy model, 256 requests of 512 random prompt tokens and 256 output tokens (EOS
# ignored), all sent at once (`bench serving --request-rate inf`) to `jackfield serve` in each layout,
# so the three share the HTTP path; `jackfield bench offline` (no server: one GPU, and TP 2) is the
# reference for what the server path costs (DP needs the server: the in-process
# engine is one replica). Each run writes a JSON report; the table at the end compares them.
# Engine flags as benchmarks/tp_suite.sh uses them (triton attention, graphs to batch 256, 16k chunks).
# The prefix layouts measure the router itself: 256 prompts in 16 groups that share a 2048-token
# prefix (own part 256, output 128), DP 2 with the cache-aware router vs DP 2 routing by load only
# (`--router-cache-threshold 1`, which no match exceeds), one GPU for reference.
#
# Usage on the device (2 GPUs):
#   bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/dp_vs_tp.sh [LAYOUT...]
# LAYOUT: offline1 offline-tp2 gpu1 dp2 tp2 (default: these five, about 8 min on 2 x H100: pass two
# or three per device call), and the prefix layouts gpu1-prefix dp2-prefix dp2-prefix-load (about
# 4 min).
# Environment (no JACKFIELD_ prefix: those are settings): BENCH_TOKENIZER (default .gpu_carry/tok, a tokenizer for the random prompts);
# for a smoke run elsewhere, BENCH_MODEL (a config.json for dummy weights, default the 8B
# shape), BENCH_SHAPE ("prompts input output", default "256 512 256") and BENCH_PREFIX_SHAPE
# ("prompts groups prefix own output", default "256 16 2048 256 128").
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-benchmarks/results}
mkdir -p "$OUTDIR"
STAMP=$(date -u +%Y%m%d-%H%M)
TOK=${BENCH_TOKENIZER:-.gpu_carry/tok}
CFG=${BENCH_MODEL:-benchmarks/configs/llama-3.1-8b.json}
read -r NUM IN_LEN OUT_LEN <<< "${BENCH_SHAPE:-256 512 256}"
PORT=30124
LAYOUTS=${*:-offline1 offline-tp2 gpu1 dp2 tp2}
JF=(python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())')
ENGINE=(--model "$CFG" --load-format dummy --max-running-requests 256 --attention-backend "${BENCH_ATTENTION:-triton}"
        --cuda-graph-max-bs 256 --chunked-prefill-size 16384)
MODEL=("${ENGINE[@]}" --tokenizer "$TOK")

RANDOM_WL="--dataset random --random-input-len $IN_LEN --random-output-len $OUT_LEN --num-prompts $NUM"
read -r P_NUM P_GROUPS P_LEN P_OWN P_OUT <<< "${BENCH_PREFIX_SHAPE:-256 16 2048 256 128}"
PREFIX_WL="--dataset shared-prefix --shared-prefix-groups $P_GROUPS --shared-prefix-len $P_LEN --random-input-len $P_OWN --random-output-len $P_OUT --num-prompts $P_NUM"

serve_and_bench() {  # $1: layout name, $2: CUDA_VISIBLE_DEVICES, $3: workload flags, rest: extra serve flags
  local name=$1 devices=$2 workload=$3; shift 3
  local log="$OUTDIR/dp-vs-tp-serve-$name-$STAMP.log"
  echo "== $name: jackfield serve ${MODEL[*]} $* (CUDA_VISIBLE_DEVICES=$devices)"
  CUDA_VISIBLE_DEVICES=$devices "${JF[@]}" serve "${MODEL[@]}" --port $PORT "$@" > "$log" 2>&1 &
  local server=$!
  for _ in $(seq 1 400); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 $server 2>/dev/null || { echo "server died:"; tail -30 "$log"; return 1; }
    sleep 1
  done
  # shellcheck disable=SC2086  # the workload's flags split on purpose
  "${JF[@]}" bench serving --base-url "http://127.0.0.1:$PORT" --backend jackfield $workload --random-range-ratio 1.0 \
    --request-rate inf --tokenizer "$TOK" --disable-tqdm --output-file "$OUTDIR/dp-vs-tp-$name-$STAMP.json" | tail -22
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^jackfield_(dp_routed|dp_cache_hit|cache_hit_rate)' \
    > "$OUTDIR/dp-vs-tp-metrics-$name-$STAMP.txt"
  kill -TERM $server; wait $server
}

for layout in $LAYOUTS; do
  case $layout in
    offline1)
      echo "== offline1: jackfield bench offline (one GPU, no server)"
      CUDA_VISIBLE_DEVICES=0 "${JF[@]}" bench offline "${ENGINE[@]}" --num-prompts $NUM --input-len $IN_LEN \
        --output-len $OUT_LEN --output-file "$OUTDIR/dp-vs-tp-offline1-$STAMP.json" | tail -5 ;;
    offline-tp2)
      echo "== offline-tp2: jackfield bench offline --tp-size 2 (no server)"
      CUDA_VISIBLE_DEVICES=0,1 "${JF[@]}" bench offline "${ENGINE[@]}" --tp-size 2 --num-prompts $NUM --input-len $IN_LEN \
        --output-len $OUT_LEN --output-file "$OUTDIR/dp-vs-tp-offline-tp2-$STAMP.json" | tail -5 ;;
    gpu1) serve_and_bench gpu1 0 "$RANDOM_WL" ;;
    dp2) serve_and_bench dp2 0,1 "$RANDOM_WL" --dp-size 2 ;;
    gpu1-prefix) serve_and_bench gpu1-prefix 0 "$PREFIX_WL" ;;
    dp2-prefix) serve_and_bench dp2-prefix 0,1 "$PREFIX_WL" --dp-size 2 ;;
    dp2-prefix-load) serve_and_bench dp2-prefix-load 0,1 "$PREFIX_WL" --dp-size 2 --router-cache-threshold 1 ;;
    tp2) serve_and_bench tp2 0,1 "$RANDOM_WL" --tp-size 2 ;;
    *) echo "unknown layout $layout (offline1 offline-tp2 gpu1 dp2 tp2 gpu1-prefix dp2-prefix dp2-prefix-load)"; exit 2 ;;
  esac
done

python3 - "$OUTDIR" "$STAMP" <<'EOF'
import json, sys
from pathlib import Path

out, stamp = Path(sys.argv[1]), sys.argv[2]
rows = []
for name in ("offline1", "offline-tp2", "gpu1", "dp2", "tp2", "gpu1-prefix", "dp2-prefix", "dp2-prefix-load"):
    path = out / f"dp-vs-tp-{name}-{stamp}.json"
    if not path.exists():
        continue
    data = json.loads(path.read_text())
    m = data.get("metrics", data)
    tok_s = m.get("output_tok_per_s") or m.get("output_throughput")
    rows.append((name, tok_s, m.get("total_s") or m.get("duration_s"), m.get("failed", 0), m.get("mean_ttft_ms")))
bases = {n: t for n, t, *_ in rows if n in ("gpu1", "gpu1-prefix")}
print(f"{'layout':<17}{'output tok/s':>14}{'seconds':>10}{'vs gpu1':>10}{'TTFT ms':>10}{'failed':>8}")
for name, tok_s, secs, failed, ttft in rows:
    base = bases.get("gpu1-prefix" if "prefix" in name else "gpu1")
    ratio = f"{tok_s / base:.2f}x" if base and tok_s else "-"
    print(f"{name:<17}{tok_s or 0:>14.0f}{secs or 0:>10.1f}{ratio:>10}{ttft or 0:>10.1f}{failed:>8}")
EOF
