#!/usr/bin/env bash
# CPU serving benchmark, side by side in one run: `jackfield serve` and llama-cpp-python's server on the
# same GGUF (the embedded SmolLM2), `jackfield bench serving` at concurrency 1, 8 and 32.
# Needs: pip install 'llama-cpp-python[server]'. Usage: bash benchmarks/cpu_serving_vs_llamacpp.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}; mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M)
GGUF=$(python3 -c 'from jackfield.loader.default_model import default_model_path; print(default_model_path())')
TOK=$(python3 -c "from jackfield.loader.gguf import convert_gguf; print(convert_gguf('$GGUF'))")
IN=${IN_LEN:-128}; OUTLEN=${OUT_LEN:-32}
jackfield serve --port 30101 --max-running-requests 64 > "$OUT/jf-serve-$STAMP.log" 2>&1 &
JF=$!
python3 -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port 30102 --n_ctx 4096 --n_threads "$(nproc)" --interrupt_requests False > "$OUT/llamacpp-$STAMP.log" 2>&1 &
LC=$!
trap 'kill $JF $LC 2>/dev/null; wait' EXIT
for port in 30101 30102; do
  for i in $(seq 1 240); do curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break; sleep 1; done
done
curl -sf http://127.0.0.1:30101/health >/dev/null || sleep 10
for conc in 1 8 32; do
  n=$(( conc < 4 ? 8 : conc * 2 ))
  for name in jackfield:30101 llamacpp:30102; do
    label=${name%%:*}; port=${name##*:}
    jackfield bench serving --base-url "http://127.0.0.1:$port" --backend openai --dataset random \
      --random-input-len $IN --random-output-len $OUTLEN --random-range-ratio 1.0 --num-prompts $n \
      --max-concurrency $conc --tokenizer "$TOK" --disable-tqdm \
      --output-file "$OUT/cpu-serving-$label-c$conc-$STAMP.json" | grep -E "Output token throughput|Median TTFT|P99 TTFT|Successful"
    echo "^ $label concurrency $conc"
  done
done
python3 benchmarks/summarize.py "$OUT"/cpu-serving-*-$STAMP.json
