#!/usr/bin/env bash
# Quantization benchmarks on the 8B-shaped dummy model, every method side by side in one run, by part.
# Usage on the device: bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/quant_suite.sh [PART...]
# Parts (a device call lasts at most 10 minutes: pass one or two per call):
#   warm     benchmarks/gemv_warm.py: every batch-1 GEMV configuration the tuner times compiled by 14
#            processes at once, at most QUANT_WARM_S (30) s: the decode parts then load them from Triton's cache
#   tests    the quantization GPU tests (tests/gpu/test_quant_kernels.py and the FP8 KV attention tests), ~4 min
#   gemm     benchmarks/studies/quant_gemm.py: every GEMM path per 8B linear shape at 1 and 256 rows, ~2 min
#   latency  batch-1 decode, 128 in / 256 out: bf16, fp8 (on load), fp8 block (128x128), int8_wo, awq, gptq, ~6 min
#            (LATENCY_METHODS picks; also fp8head and gptqhead: the LM head quantized too, FP8 on load / INT4 stored)
#   profile  where a batch-1 decode step's time goes (benchmarks/profile_decode.py: host time, the linear
#            layers' kernels and the rest of the decode graph), PROFILE_METHODS (default fp8 awq), ~25 s each
#   offline  256 x (512 in, 256 out): bf16 and fp8 (on load), ~4 min
#   kv       FP8 KV cache on vs off: 512 x (2048 in, 256 out) offline, and the pool's capacity, ~8 min
# Results: benchmarks/results/ and $OUT; a table of the parts run is printed last (quant_summary.py), with
# each method's HBM limit (weight bytes read per token at HBM_GBPS, default the H100 SXM's 3350 GB/s).
# QUANT_DEADLINE=S: every command runs under `timeout` with what is left of S seconds from the start (a part
# reached later is skipped), QUANT_TESTS_S caps the tests part; QUANT_TESTS_K selects tests (pytest -k), e.g.
# 'not flashinfer and (quant_kernels or fp8_kv_cache)' to leave out FlashInfer's JIT compilation (2+ min).
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
DEADLINE=${QUANT_DEADLINE:-0}
run_for() {  # $1: the most seconds this command may take (0: no cap), rest: the command
  local cap=$1; shift
  if (( DEADLINE )); then
    local left=$((DEADLINE - SECONDS))
    (( left > 5 )) || { echo "skipped, past QUANT_DEADLINE: $*" >&2; return 124; }
    (( cap == 0 || left < cap )) && cap=$left
  fi
  echo "+ $*" >&2
  local rc=0
  if (( cap )); then eval "timeout -k 5 $cap $*" || rc=$?; else eval "$@" || rc=$?; fi
  (( rc == 0 )) || echo "exit $rc (124: timed out after ${cap}s): $*" >&2
  return $rc
}
run() { run_for 0 "$@"; }
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has warm; then
  run_for $((${QUANT_WARM_S:-30} + 5)) python3 benchmarks/gemv_warm.py --jobs ${QUANT_WARM_JOBS:-14} \
    --seconds ${QUANT_WARM_S:-30} 2>&1 | tail -n 3
fi
if has tests; then
  run_for ${QUANT_TESTS_S:-0} python3 -m pytest -n ${GPU_TEST_WORKERS:-8} -v -m gpu -p no:cacheprovider -rfE \
    tests/gpu/test_quant_kernels.py tests/gpu/test_attention_kernels.py \
    -k "'${QUANT_TESTS_K:-quant_kernels or fp8_kv_cache}'" 2>&1 | tee -a "$OUT/quant-tests-$STAMP.txt" \
    | grep -E "FAILED|ERROR|passed|failed|timed out" | tail -30
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
  [fp8head]=".json|--quantization fp8 --quantize-lm-head"
  [gptqhead]="-gptq-lm-head.json|"
)
if has latency; then
  for name in ${LATENCY_METHODS:-bf16 fp8 fp8block int8 awq gptq}; do
    spec=${METHOD[$name]}; cfg=$CFG${spec%%|*}; flags=${spec#*|}
    log="$OUTDIR/quant-latency-8b-$name-$STAMP.log"
    run $JF bench latency --model $cfg --load-format dummy --attention-backend $BE $flags --batch-size 1 \
      --input-len 128 --output-len 256 --max-total-tokens 65536 --cuda-graph-max-bs ${LATENCY_GRAPH_BS:-1} \
      ${QUANT_FLAGS:-} --output-file "$OUTDIR/quant-latency-8b-$name-$STAMP.json" "> /dev/null 2> $log" || tail -n 15 "$log" 2> /dev/null
  done
fi
if has profile; then
  for name in ${PROFILE_METHODS:-fp8 awq}; do
    spec=${METHOD[$name]}; cfg=$CFG${spec%%|*}; flags=${spec#*|}
    log="$OUTDIR/quant-profile-8b-$name-$STAMP.log"
    run python3 benchmarks/profile_decode.py --model $cfg --load-format dummy --attention-backend $BE $flags \
      --batch-size 1 --input-len 128 --output-len 256 --profile-len 0 --max-total-tokens 65536 --cuda-graph-max-bs 1 \
      ${QUANT_FLAGS:-} "> $OUTDIR/quant-profile-8b-$name-$STAMP.json 2> $log" || tail -n 15 "$log" 2> /dev/null
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
python3 benchmarks/quant_summary.py --hbm-gbps ${HBM_GBPS:-3350} $OUTDIR/quant-*-$STAMP.json | tee "$OUT/quant-summary-$STAMP.md"
