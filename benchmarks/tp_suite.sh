#!/usr/bin/env bash
# Tensor, data and expert parallelism on a 2-GPU node (2 x H100), by part. Results: benchmarks/results/.
# Usage on the device: bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/tp_suite.sh PART...
# Parts (expected runtime once warm; a device call lasts at most 10 minutes, so pass one or two per call):
#   tests      the 2-GPU tests: TP 2 = TP 1 over 64 greedy tokens on the 1B and 8B shapes, EP 2 on Qwen3-30B-A3B (~4 min)
#   allreduce  NCCL all-reduce latency of [batch, 4096] bf16, eager and in a CUDA graph; per-token cost at 32 layers (~1 min)
#   latency    8B shape, batch 1 (input 128, output 256): TP 1, then TP 2, same call (~3 min); goal TP 2 >= 1.6x
#   offline    8B shape, 256 x (512 in, 256 out) in process (bench offline): one GPU, then TP 2 (~4 min); DP 2 needs
#              a server (the in-process engine is one replica): benchmarks/dp_vs_tp.sh compares all three
#   70b        70B shape (80 layers, hidden 8192, 64/8 heads, MLP 28672) at TP 2: bf16 (~65.7 GiB of weights per
#              GPU), else fp8 weights (QUANT70=fp8); batch 1, then offline 64 x (512 in, 256 out) (~8 min)
#   ep         Qwen3-30B-A3B shape at TP 2 / EP 2 vs one GPU: batch-1 decode and offline 256 x (512, 256) (~6 min)
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=benchmarks/results
mkdir -p "$OUTDIR"
STAMP=$(date -u +%Y%m%d-%H%M)
PARTS=${*:-tests allreduce latency}
export OUT=${OUT:-$OUTDIR}
JF="python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())'"
CFG8B=benchmarks/configs/llama-3.1-8b.json
CFG70B=benchmarks/configs/llama-70b.json
QWEN=benchmarks/configs/qwen3-30b-a3b.json
run() { echo "+ $*" >&2; eval "$@"; }
keep() { [ "$OUT" != "$OUTDIR" ] && cp "$@" "$OUT"/ 2>/dev/null; true; }
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has tests; then
  run python3 -m pytest -v -m gpu -p no:cacheprovider -rfE tests/gpu/test_tp_gpu.py 2>&1 | tee "$OUT/tp-tests-$STAMP.txt" | tail -15
fi
if has allreduce; then
  run python3 benchmarks/allreduce_latency.py --world 2 --hidden 4096 --layers 32 --out "$OUTDIR/allreduce-2gpu-$STAMP.json"
  keep "$OUTDIR/allreduce-2gpu-$STAMP.json"
fi
if has latency; then
  for tp in 1 2; do
    run $JF bench latency --model $CFG8B --load-format dummy --attention-backend triton --batch-size 1 --tp-size $tp \
      --input-len 128 --output-len 256 --max-total-tokens 65536 --cuda-graph-max-bs 32 \
      --output-file "$OUTDIR/latency-8b-tp$tp-$STAMP.json" > /dev/null
    keep "$OUTDIR/latency-8b-tp$tp-$STAMP.json"
  done
fi
if has offline; then
  for sizes in "--tp-size 1" "--tp-size 2"; do
    tag=$(echo "$sizes" | tr -d ' -')
    run $JF bench offline --model $CFG8B --load-format dummy --attention-backend triton $sizes --num-prompts 256 \
      --input-len 512 --output-len 256 --max-running-requests 256 --cuda-graph-max-bs 256 --chunked-prefill-size 16384 \
      --output-file "$OUTDIR/offline-8b-$tag-$STAMP.json" > /dev/null
    keep "$OUTDIR/offline-8b-$tag-$STAMP.json"
  done
fi
if has 70b; then
  quant=${QUANT70:-unquantized}
  run $JF bench latency --model $CFG70B --load-format dummy --attention-backend triton --tp-size 2 --quantization $quant \
    --mem-fraction-static 0.93 --batch-size 1 --input-len 128 --output-len 128 --cuda-graph-max-bs 64 \
    --output-file "$OUTDIR/latency-70b-tp2-$quant-$STAMP.json" > /dev/null
  run $JF bench offline --model $CFG70B --load-format dummy --attention-backend triton --tp-size 2 --quantization $quant \
    --mem-fraction-static 0.93 --num-prompts 64 --input-len 512 --output-len 256 --max-running-requests 64 \
    --cuda-graph-max-bs 64 --chunked-prefill-size 8192 --output-file "$OUTDIR/offline-70b-tp2-$quant-$STAMP.json" > /dev/null
  keep "$OUTDIR"/*70b-tp2-$quant-$STAMP.json
fi
if has ep; then
  for sizes in "--tp-size 1" "--tp-size 2 --ep-size 2"; do
    tag=$(echo "$sizes" | tr -d ' -')
    run $JF bench latency --model $QWEN --load-format dummy $sizes --batch-size 1 --input-len 128 --output-len 256 \
      --max-total-tokens 65536 --output-file "$OUTDIR/latency-qwen3moe-$tag-$STAMP.json" > /dev/null
    run $JF bench offline --model $QWEN --load-format dummy $sizes --num-prompts 256 --input-len 512 --output-len 256 \
      --max-running-requests 256 --chunked-prefill-size 16384 --output-file "$OUTDIR/offline-qwen3moe-$tag-$STAMP.json" > /dev/null
    keep "$OUTDIR"/*qwen3moe-$tag-$STAMP.json
  done
fi
