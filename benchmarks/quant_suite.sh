#!/usr/bin/env bash
# Quantization benchmarks on the 8B-shaped dummy model, every method side by side in one run, by part.
# Usage on the device: bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/quant_suite.sh [PART...]
# Parts (a device call lasts at most 10 minutes: pass one or two per call):
#   tests    the quantization GPU tests (tests/gpu/test_quant_kernels.py and the FP8 KV attention tests), ~4 min
#   gemm     benchmarks/studies/quant_gemm.py: every GEMM path per 8B linear shape at 1 and 256 rows, ~2 min
#   latency  batch-1 decode, 128 in / 256 out: bf16, fp8 (on load), fp8 block (128x128), int8_wo, awq, gptq, ~6 min
#   offline  256 x (512 in, 256 out): bf16 and fp8 (on load), ~4 min
#   kv       FP8 KV cache on vs off: 512 x (2048 in, 256 out) offline, and the pool's capacity, ~8 min
# Results: benchmarks/results/ and $OUT; a table of the parts run is printed last (quant_summary.py).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=benchmarks/results
mkdir -p "$OUTDIR"
STAMP=$(date -u +%Y%m%d-%H%M)
PARTS=${*:-gemm latency}
export OUT=${OUT:-$OUTDIR}
CFG=benchmarks/configs/llama-3.1-8b
BE=${QUANT_ATTENTION_BACKEND:-triton}
JF="python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())'"
run() { echo "+ $*" >&2; eval "$@"; }
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has tests; then
  run python3 -m pytest -n ${GPU_TEST_WORKERS:-8} -v -m gpu -p no:cacheprovider -rfE tests/gpu/test_quant_kernels.py \
    tests/gpu/test_attention_kernels.py -k "'quant or fp8'" 2>&1 | tee -a "$OUT/quant-tests-$STAMP.txt" \
    | grep -E "FAILED|ERROR|passed|failed" | tail -30
fi
if has gemm; then
  run python3 benchmarks/studies/quant_gemm.py --rows ${GEMM_ROWS:-1,256} --out "$OUTDIR/quant-gemm-$STAMP.json" 2>&1 | tail -40
fi
# name -> model config suffix and flags (dummy weights in each method's own checkpoint layout)
declare -A METHOD=(
  [bf16]=".json|"
  [fp8]=".json|--quantization fp8"
  [fp8block]="-fp8-block.json|"
  [int8]=".json|--quantization int8_wo"
  [awq]="-awq.json|"
  [gptq]="-gptq.json|"
)
if has latency; then
  for name in ${LATENCY_METHODS:-bf16 fp8 fp8block int8 awq gptq}; do
    spec=${METHOD[$name]}; cfg=$CFG${spec%%|*}; flags=${spec#*|}
    run $JF bench latency --model $cfg --load-format dummy --attention-backend $BE $flags --batch-size 1 \
      --input-len 128 --output-len 256 --max-total-tokens 65536 --cuda-graph-max-bs 32 ${QUANT_FLAGS:-} \
      --output-file "$OUTDIR/quant-latency-8b-$name-$STAMP.json" > /dev/null
  done
fi
if has offline; then
  for name in ${OFFLINE_METHODS:-bf16 fp8}; do
    spec=${METHOD[$name]}; cfg=$CFG${spec%%|*}; flags=${spec#*|}
    run $JF bench offline --model $cfg --load-format dummy --attention-backend $BE $flags --num-prompts 256 \
      --input-len 512 --output-len 256 --max-running-requests 256 --cuda-graph-max-bs 256 --chunked-prefill-size 16384 \
      ${QUANT_FLAGS:-} --output-file "$OUTDIR/quant-offline-8b-$name-$STAMP.json" > /dev/null
  done
fi
if has kv; then  # the pool's capacity (max_total_tokens in the report) and throughput where the bf16 cache runs out
  for kv in auto fp8_e4m3; do
    run $JF bench offline --model $CFG.json --load-format dummy --attention-backend $BE --kv-cache-dtype $kv \
      --num-prompts ${KV_PROMPTS:-512} --input-len 2048 --output-len 256 --max-running-requests 512 \
      --cuda-graph-max-bs 256 --chunked-prefill-size 16384 ${QUANT_FLAGS:-} \
      --output-file "$OUTDIR/quant-kv-8b-$kv-$STAMP.json" > /dev/null
  done
fi
[ "$OUT" != "$OUTDIR" ] && tar czf "$OUT/quant-results-$STAMP.tgz" $OUTDIR/quant-*-$STAMP.* 2>/dev/null
python3 benchmarks/quant_summary.py $OUTDIR/quant-*-$STAMP.json
