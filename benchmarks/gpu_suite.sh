#!/usr/bin/env bash
# The GPU suite: GPU tests + every GPU benchmark, by part. Prints a short table last.
# Usage on the device: bash .whl/install.sh && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_suite.sh [PART...]
# Product benchmarks (docs/benchmarks.md): tests fitests kernels latency offline prefix overlap serving (the default).
# kit: the conformance kit on every built-in CUDA component (tests/gpu/test_kit_cuda.py; FlashInfer JIT-compiles).
# grammar: structured-output overhead and jump-forward (jackfield bench grammar).
# lora: multi-LoRA GPU tests, 8B batch-1 decode with and without a rank-16 adapter; loraoffline: 8B offline
# over 8 and 64 adapters and with more adapters than slots, against the base model (benchmarks/lora_bench.py).
# spec: speculative decoding (GPU tests; verify cost, ngram on vs off at batch 1-128 and an oracle drafter on the 8B shape).
# spec-eagle: ngram on SmolLM2, an EAGLE head trained on SmolLM2 and its speedup (one more call).
# spec-flashinfer: FlashInfer's speculative verify mode (its JIT modules first; GPU tests; oracle drafter on the 8B shape).
# Diagnostics: profile, pdl. Studies (benchmarks/studies/, results in benchmarks/studies/results/): gemv gemm tune probe.
# A device call lasts at most 10 minutes: pass a few parts per call. Results: benchmarks/results/ and $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=benchmarks/results
mkdir -p "$OUTDIR" benchmarks/studies/results
STAMP=$(date -u +%Y%m%d-%H%M)
STUDIES=benchmarks/studies/results
PARTS=${*:-tests fitests kernels latency offline prefix overlap serving}
# The trace files of the profile part go to $OUT when it is set (device calls), else here.
export OUT=${OUT:-$OUTDIR}
CFG8B=benchmarks/configs/llama-3.1-8b.json
CFG1B=benchmarks/configs/llama-1b.json
JF="python3 -c 'import sys; from jackfield.cli import main; sys.exit(main())'"
run() { echo "+ $*" >&2; eval "$@"; }
keep() { [ "$OUT" != "$OUTDIR" ] && cp "$@" "$OUT"/ 2>/dev/null; true; }  # a result to $OUT now, in case the call is cut short
has() { [[ " $PARTS " == *" $1 "* ]]; }

# tests: everything but FlashInfer's kernel tests (about 3 min). fitests: FlashInfer's kernel tests, which
# JIT-compile a module per dtype, head dim and variant (about 8 min on a fresh device, 16 cores): with the
# 10-minute limit of a device call, run the two parts in separate calls. pytest-xdist workers compile side by side.
gpu_pytest() {  # $1: log name, rest: pytest arguments
  local log=$1; shift
  run python3 -m pytest -n ${GPU_TEST_WORKERS:-8} -v -m gpu -p no:cacheprovider -rfE "$@" 2>&1 \
    | tee -a "$OUT/$log-$STAMP.txt" | grep -E "FAILED|ERROR|passed|failed" | tail -25
}
if has tests; then
  gpu_pytest gpu-tests tests/gpu/test_attention_kernels.py -k "'triton'"
  gpu_pytest gpu-tests tests/gpu/test_fused_kernels.py tests/gpu/test_decode_no_sync.py tests/gpu/test_e2e_backends.py tests/gpu/test_launch_clock_gpu.py \
    tests/gpu/test_prompt_readout_gpu.py
fi
if has kit; then
  gpu_pytest gpu-kit tests/gpu/test_kit_cuda.py
fi
if has fitests; then
  GPU_TEST_WORKERS=${GPU_TEST_WORKERS:-12} gpu_pytest gpu-tests-fi tests/gpu/test_attention_kernels.py -k "'not triton'"
fi
if has profile; then  # where decode time goes: graph-only device time vs scheduler step, device idle gaps
  for be in ${PROFILE_BACKENDS:-triton}; do
    run python3 benchmarks/profile_decode.py --model $CFG8B --load-format dummy --attention-backend $be \
      --batch-size 1 --max-total-tokens 65536 --cuda-graph-max-bs 32 2> "$OUTDIR/profile-8b-$be-bs1-$STAMP.txt" \
      | tee "$OUTDIR/profile-8b-$be-bs1-$STAMP.json"
  done
  run python3 benchmarks/profile_decode.py --model $CFG8B --load-format dummy --attention-backend triton \
    --batch-size 256 --input-len 512 --output-len 16 --profile-len 2 --phases 20 --max-running-requests 256 \
    --cuda-graph-max-bs 256 --chunked-prefill-size 8192 2> "$OUTDIR/profile-8b-triton-bs256-$STAMP.txt" \
    > "$OUTDIR/profile-8b-triton-bs256-$STAMP.json"
fi
if has tune; then  # block configurations of the triton decode and extend kernels
  run python3 benchmarks/studies/tune_triton_decode.py --out "$STUDIES/tune-decode-$STAMP.json" 2>&1 | tail -70
  run python3 benchmarks/studies/tune_triton_extend.py --out "$STUDIES/tune-extend-$STAMP.json" 2>&1 | tail -45
fi
if has kernels; then
  run python3 benchmarks/attention_kernels.py --cuda-graph --cold-l2 --backends ${KERNEL_BACKENDS:-triton,flashinfer,fa3} --out "$OUTDIR/kernels-$STAMP.json" 2>&1 | tail -50
fi
if has gemv; then  # batch-1 linears of an 8B decode step back to back: cuBLAS, Triton GEMV, Triton GEMV with PDL
  run python3 benchmarks/studies/gemv_chain.py --out "$STUDIES/gemv-chain-$STAMP.json" 2>&1 | grep "per step"
fi
if has gemm; then  # decode-size GEMMs on the 8B linear shapes: cuBLAS against Triton TMA GEMM configurations
  run python3 benchmarks/studies/small_gemm_sweep.py --rows ${GEMM_ROWS:-128,256} --out "$STUDIES/gemm-$STAMP.json" 2>&1 | tail -25
  run python3 benchmarks/studies/small_gemm_sweep.py --rows 256,16384 --layouts --no-triton --out "$STUDIES/gemm-layouts-$STAMP.json" 2>&1 | tail -10
fi
if has probe; then  # prefill GEMMs and decode attention side by side (green contexts); prefill GEMMs at the power limit
  run python3 benchmarks/studies/overlap_probe.py --sms 8,16,24,32,48,66 --out "$STUDIES/overlap-probe-$STAMP.json"
  run python3 benchmarks/studies/gemm_power.py --out "$STUDIES/gemm-power-$STAMP.json"
fi
if has latency; then
  for be in ${LATENCY_BACKENDS:-flashinfer triton torch_native}; do
    extra=""; [ "$be" = "${HF_COMPARE_WITH:-flashinfer}" ] && extra="--compare-transformers ${HF_FLAGS---hf-compile}"
    run $JF bench latency --model $CFG8B --load-format dummy --attention-backend $be --batch-size 1 \
      --input-len 128 --output-len 256 --max-total-tokens 65536 --cuda-graph-max-bs 32 $extra \
      --output-file "$OUTDIR/latency-8b-$be-$STAMP.json" > /dev/null
  done
fi
if has offline; then
  # OFFLINE_FLAGS: extra engine flags, OFFLINE_TAG: report name; P+D: prefill backend P, decode backend D
  for be in ${OFFLINE_BACKENDS:-flashinfer triton flashinfer+triton}; do
    # transformers' continuous batching on the same prompts first, in the same command (about 2 min)
    extra=""; [ "$be" = "${HF_COMPARE_WITH:-flashinfer}" ] && extra="--compare-transformers"
    modes="--attention-backend ${be#*+}"
    [[ $be == *+* ]] && modes="$modes --prefill-attention-backend ${be%+*} --decode-attention-backend ${be#*+}"
    run $JF bench offline --model $CFG8B --load-format dummy $modes --num-prompts 256 \
      --input-len 512 --output-len 256 --max-running-requests 256 --cuda-graph-max-bs 256 --chunked-prefill-size 16384 \
      $extra ${OFFLINE_FLAGS:-} --output-file "$OUTDIR/offline-8b-${be/+/-}${OFFLINE_TAG:-}-$STAMP.json" > /dev/null
  done
fi
LORA="python3 benchmarks/lora_bench.py"
if has lora; then  # rank-16 adapters on all 7 linear modules of every layer (dummy random weights)
  gpu_pytest gpu-lora tests/lora/test_lora_gpu.py tests/gpu/test_kit_cuda.py -k lora  # e2e, then the kit on CUDA
  for n in 0 1; do
    run $LORA latency --adapters $n --rank 16 --model $CFG8B --load-format dummy --attention-backend triton \
      --batch-size 1 16 --input-len 128 --output-len 256 --max-total-tokens 65536 --cuda-graph-max-bs 32 \
      --output-file "$OUTDIR/lora-latency-8b-a$n-$STAMP.json" > /dev/null
  done
fi
if has loraoffline; then  # adapters:max_loras; 64:16 swaps adapters through 16 slots
  for cfg in ${LORA_OFFLINE:-0:8 8:8 64:64 64:16}; do
    n=${cfg%:*}; slots=${cfg#*:}
    run $LORA offline --adapters $n --rank 16 --max-loras $slots --model $CFG8B --load-format dummy \
      --attention-backend triton --num-prompts 256 --input-len 512 --output-len 256 --max-running-requests 256 \
      --cuda-graph-max-bs 256 --chunked-prefill-size 16384 --output-file "$OUTDIR/lora-offline-8b-a$n-s$slots-$STAMP.json" > /dev/null
  done
fi
if has pdl; then  # A/B of programmatic dependent launch in one run: each command with JACKFIELD_DISABLE_PDL=1, then without
  for pdl in off on; do
    run env $([ $pdl = off ] && echo JACKFIELD_DISABLE_PDL=1) $JF bench offline --model $CFG8B --load-format dummy \
      --attention-backend triton --num-prompts 256 --input-len 512 --output-len 256 --max-running-requests 256 \
      --cuda-graph-max-bs 256 --chunked-prefill-size 16384 --output-file "$OUTDIR/offline-8b-triton-pdl$pdl-$STAMP.json" > /dev/null
  done
  for be in ${PDL_BACKENDS:-triton flashinfer}; do
    for pdl in off on; do
      run env $([ $pdl = off ] && echo JACKFIELD_DISABLE_PDL=1) $JF bench latency --model $CFG8B --load-format dummy \
        --attention-backend $be --batch-size 1 --input-len 128 --output-len 256 --max-total-tokens 65536 \
        --cuda-graph-max-bs 32 --output-file "$OUTDIR/latency-8b-$be-pdl$pdl-$STAMP.json" > /dev/null
    done
  done
fi
if has prefix; then
  run $JF bench prefix --model $CFG8B --load-format dummy --attention-backend ${PREFIX_BACKEND:-triton} --num-prompts 64 --prefix-len 1000 --suffix-len 50 \
    --output-len 32 --max-total-tokens 200000 --output-file "$OUTDIR/prefix-8b-$STAMP.json" > /dev/null
fi
if has overlap; then
  for ov in on off; do
    flag=""; [ $ov = off ] && flag="--disable-overlap-schedule"
    run $JF bench latency --model $CFG1B --load-format dummy --attention-backend ${OVERLAP_BACKEND:-triton} --batch-size 64 --input-len 128 --output-len 256 \
      --max-total-tokens 100000 $flag --output-file "$OUTDIR/overlap-$ov-1b-$STAMP.json" > /dev/null
  done
fi
if has grammar; then  # structured outputs: the bitmask kernel's GPU test, then constrained vs plain tok/s and jump-forward
  gpu_pytest gpu-tests tests/grammar/test_bitmask.py tests/grammar/test_structured_gpu.py
  for cfg in $CFG1B $CFG8B; do
    tag=$(basename $cfg .json)
    run $JF bench grammar --model $cfg --load-format dummy --attention-backend ${GRAMMAR_BACKEND_ATTN:-triton} \
      --parts throughput jump --batch-size 1 32 --input-len 128 --output-len 256 --max-total-tokens 100000 \
      --cuda-graph-max-bs 64 --output-file "$OUTDIR/grammar-$tag-$STAMP.json" > /dev/null
  done
fi
if has serving; then
  bash benchmarks/gpu_serving.sh "$OUTDIR" "$STAMP"
fi
if has spec; then  # speculative decoding, one device call (about 5 min): GPU tests (Triton verify kernel, verify and
  # draft CUDA graphs, greedy output equal to plain decoding); one verify forward vs one decode step on the 8B shape;
  # ngram on vs off on the 8B shape with dummy weights (SmolLM2's tokenizer) at batch 1, 32 and 128 (load policy on:
  # never slower than plain decoding); the speedup of an oracle drafter with accepted length 1..8 on the 8B shape
  # (dummy weights repeat nothing, so no real drafter is accepted there)
  gpu_pytest gpu-tests-spec tests/gpu/test_spec_gpu.py -k "'not flashinfer'"  # flashinfer: the spec-flashinfer part
  run timeout 100 python3 benchmarks/spec_verify_cost.py --model $CFG8B --load-format dummy --attention-backend triton \
    --batch-sizes 1,16 --draft-tokens 4,8,16 --max-total-tokens 65536 --out "$OUTDIR/spec-verify-cost-8b-$STAMP.json" > /dev/null
  keep "$OUTDIR/spec-verify-cost-8b-$STAMP.json"
  TOK=${TOK:-$(python3 -c 'from jackfield.loader.source import resolve_model; print(resolve_model(None).path)')}
  run timeout 120 $JF bench spec --model $CFG8B --load-format dummy --tokenizer "$TOK" --speculative-algorithm ngram \
    --attention-backend triton --workload rewrite --batch-sizes ${SPEC_BATCH_SIZES:-1,32,128} --output-len 128 \
    --max-total-tokens 100000 --cuda-graph-max-bs 128 --output-file "$OUTDIR/spec-ngram-8b-$STAMP.json" > /dev/null
  keep "$OUTDIR/spec-ngram-8b-$STAMP.json"
  run timeout 100 python3 benchmarks/spec_oracle.py --model $CFG8B --load-format dummy --tokenizer "$TOK" \
    --attention-backend triton --batch-sizes 1,32 --accept-lengths 1,2,3,5,8 --output-len 128 --max-total-tokens 100000 \
    --cuda-graph-max-bs 32 --out "$OUTDIR/spec-oracle-8b-$STAMP.json" > /dev/null
  keep "$OUTDIR/spec-oracle-8b-$STAMP.json"
fi
if has spec-flashinfer; then  # one device call (about 8 min on a fresh machine): FlashInfer JIT-builds its causal prefill
  # (sm90) and custom-mask prefill (verify, tensor-core decode) modules on first use, 1-2 min each; built side by side
  # first, so the tests and the oracle load them. Tests: verify vs the float32 tree reference, CUDA-graph verify replay,
  # ngram greedy output equal to plain decoding (bf16, graphs on); then the oracle drafter at accepted lengths 1 and 5
  run timeout 300 python3 benchmarks/attention_warmup.py --backend flashinfer
  GPU_TEST_WORKERS=${GPU_TEST_WORKERS:-2} gpu_pytest gpu-tests-spec-fi tests/gpu/test_spec_gpu.py -k flashinfer
  TOK=${TOK:-$(python3 -c 'from jackfield.loader.source import resolve_model; print(resolve_model(None).path)')}
  run timeout 150 python3 benchmarks/spec_oracle.py --model $CFG8B --load-format dummy --tokenizer "$TOK" \
    --attention-backend flashinfer --batch-sizes 1,32 --accept-lengths 1,5 --output-len 128 --max-total-tokens 100000 \
    --cuda-graph-max-bs 32 --out "$OUTDIR/spec-oracle-8b-flashinfer-$STAMP.json" > /dev/null
  keep "$OUTDIR/spec-oracle-8b-flashinfer-$STAMP.json"
fi
if has spec-eagle; then  # an EAGLE head trained here on SmolLM2 (bf16), then EAGLE and ngram on vs off (about 9 min;
  # SmolLM2's GGUF is over one call's carry limit: ../shared/gpu/split_file.py and back-to-back calls bring it)
  run $JF bench spec --speculative-algorithm ngram --attention-backend triton --workload rewrite \
    --batch-sizes 1,8 --output-len 256 --max-total-tokens 300000 --output-file "$OUTDIR/spec-ngram-smollm2-$STAMP.json" > /dev/null
  EAGLE_HEAD=${EAGLE_HEAD:-/tmp/eagle-smollm2}  # data.pt (GBs) and checkpoint.pt stay there; the head is ~17 MB
  # 8192 answers and 3000 steps of 32: about 2.5 + 3.2 min on the H100; the held-out agreement it prints at
  # each save, and eagle_agreement.py on the `chat` answers below, say whether the head generalizes
  run $JF spec train-eagle --out "$EAGLE_HEAD" --device cuda --samples ${EAGLE_SAMPLES:-8192} --gen-batch 160 \
    --max-new-tokens 256 --steps ${EAGLE_STEPS:-3000} --batch-seqs 32 --lr 1e-3 --save-every 250 --time-limit 4
  run python3 benchmarks/studies/eagle_agreement.py --head "$EAGLE_HEAD" --device cuda --workload chat --num-prompts 8 \
    | tee "$STUDIES/eagle-agreement-smollm2-$STAMP.json"
  # a chain (4 drafts; drafted from CUDA graphs) and EAGLE-2 trees of 8 and 16 tokens (drafted eagerly)
  for shape in "chain --speculative-eagle-topk 1 --speculative-num-steps 4 --speculative-num-draft-tokens 5" \
               "tree --speculative-eagle-topk 4 --speculative-num-steps 5 --speculative-num-draft-tokens 8" \
               "tree16 --speculative-eagle-topk 8 --speculative-num-steps 6 --speculative-num-draft-tokens 16"; do
    set -- $shape
    tag=$1; shift
    run $JF bench spec --speculative-algorithm eagle --speculative-draft-model-path "$EAGLE_HEAD" --attention-backend triton \
      "$@" --workload chat --batch-sizes 1 --num-prompts 8 --output-len 256 --no-speculative-load-aware \
      --output-file "$OUTDIR/spec-eagle-smollm2-$tag-$STAMP.json" > /dev/null
  done
fi
[ "$OUT" != "$OUTDIR" ] && tar czf "$OUT/results-$STAMP.tgz" $OUTDIR/*-$STAMP.* $STUDIES/*-$STAMP.* 2>/dev/null
python3 benchmarks/summarize.py $OUTDIR/*-$STAMP.json
