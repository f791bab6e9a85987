#!/usr/bin/env bash
# MoE and MLA benchmarks on one GPU (H100), by part; one command per part. Results: benchmarks/results/.
# Usage on the device: bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/moe_suite.sh PART...
# Parts (expected runtime on an H100 once warm; a device call lasts at most 10 minutes, so pass a few per call):
#   tune      tune the triton MoE block configs for both model shapes, bf16 and FP8 experts (~1.5 min each), written to
#             plugins/moe/configs/ (copy them back into the repository) and benchmarks/results/tune-moe-*.json
#   kernels   fused MoE layer vs torch_native vs a dense MLP of the same FLOPs, batch 1/64/256 (~2 min)
#   mla       MLA decode bandwidth at batch 64, context 2048, 16 and 128 heads, vs the copy ceiling (~1 min)
#   decode    Qwen3-30B-A3B shape (48 layers, 61 GB of dummy bf16), decode at batch 1 and 64 against the
#             weight-bytes limit at the measured copy bandwidth (benchmarks/moe_decode_limit.py; ~2 min)
#   qwen3     Qwen3-30B-A3B shape, dummy bf16: batch-1 decode (input 128, output 256), then offline
#             256 x (512 in, 256 out) (~5 min: 61 GB of dummy weights, graph capture, two runs)
#   qwen3-hf  transformers on the same shape, each in its own process: batch-1 generate (input 128, output
#             64), then generate_batch continuous batching on the offline workload (~5-10 min)
#   dsv2      DeepSeek-V2-Lite shape, dummy bf16: the same two jackfield runs (~3 min)
#   dsv2-hf   transformers on the DeepSeek-V2-Lite shape, as qwen3-hf (~5 min)
# MOE_BACKEND / MLA_BACKEND pick the dispatcher and the attention backend of the model parts (default: auto,
# i.e. triton and, for DeepSeek, triton_mla).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=benchmarks/results
mkdir -p "$OUTDIR"
STAMP=$(date -u +%Y%m%d-%H%M)
PARTS=${*:-kernels mla}
JF="python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())'"
QWEN=benchmarks/configs/qwen3-30b-a3b.json
DSV2=benchmarks/configs/deepseek-v2-lite.json
BACKENDS="--moe-backend ${MOE_BACKEND:-auto} --attention-backend ${MLA_BACKEND:-auto}"
run() { echo "+ $*" >&2; eval "$@"; }
has() { [[ " $PARTS " == *" $1 "* ]]; }

if has tune; then
  run python3 benchmarks/tune_fused_moe.py --shape qwen3-30b-a3b,deepseek-v2-lite --out "$OUTDIR/tune-moe-$STAMP.json"
  run python3 benchmarks/tune_fused_moe.py --shape qwen3-30b-a3b,deepseek-v2-lite --format fp8_block \
    --out "$OUTDIR/tune-moe-fp8-$STAMP.json"
fi
if has kernels; then
  run python3 benchmarks/moe_kernels.py --out "$OUTDIR/moe-kernels-$STAMP.json"
fi
if has mla; then
  run python3 benchmarks/mla_decode.py --out "$OUTDIR/mla-decode-$STAMP.json"
fi
if has decode; then
  run python3 benchmarks/moe_decode_limit.py --model $QWEN --batch-size 1 64 $BACKENDS \
    --out "$OUTDIR/moe-decode-limit-qwen3-$STAMP.json"
fi
model_runs() {  # $1: config, $2: tag, rest: extra engine flags of the offline run
  local cfg=$1 tag=$2; shift 2
  run $JF bench latency --model $cfg --load-format dummy $BACKENDS --batch-size 1 --input-len 128 --output-len 256 \
    --max-total-tokens 65536 --cuda-graph-max-bs 32 --output-file "$OUTDIR/latency-$tag-$STAMP.json" > /dev/null
  run $JF bench offline --model $cfg --load-format dummy $BACKENDS --num-prompts 256 --input-len 512 --output-len 256 \
    --max-running-requests 256 --cuda-graph-max-bs 256 --chunked-prefill-size 16384 "$@" \
    --output-file "$OUTDIR/offline-$tag-$STAMP.json" > /dev/null
}
hf_runs() {  # $1: config, $2: tag
  run python3 benchmarks/hf_generate_peer.py --model $1 --batch-size 1 --input-len 128 --output-len 64 \
    --out "$OUTDIR/hf-latency-$2-$STAMP.json"
  run python3 -m jackfield.bench.hf_peer --model $1 --load-format dummy --device cuda --dtype bfloat16 \
    --num-prompts 256 --input-len 512 --output-len 256 "> $OUTDIR/hf-offline-$2-$STAMP.json"
}
has qwen3 && model_runs $QWEN qwen3-30b --mem-fraction-static 0.9
has qwen3-hf && hf_runs $QWEN qwen3-30b
has dsv2 && model_runs $DSV2 dsv2-lite
has dsv2-hf && hf_runs $DSV2 dsv2-lite
[ "${OUT:-}" != "" ] && [ "${OUT:-}" != "$OUTDIR" ] && tar czf "$OUT/moe-results-$STAMP.tgz" $OUTDIR/*-$STAMP.* plugins/moe/configs 2>/dev/null
python3 benchmarks/summarize.py $OUTDIR/*-$STAMP.json 2>/dev/null || true
