"""transformers `generate` on a model config with dummy weights, in its own process: the batch-1 decode
peer of `jackfield bench latency` for models too large to hold twice on one GPU (Qwen3-30B-A3B is
61 GB in bf16; `--compare-transformers` keeps both in one process).

    python benchmarks/hf_generate_peer.py --model benchmarks/configs/qwen3-30b-a3b.json \
        --batch-size 1 --input-len 128 --output-len 64 --out benchmarks/results/hf-latency-qwen3.json [--compile]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from jackfield.bench.common import provenance
from jackfield.bench.hf_peer import load_model, measure_generate
from jackfield.loader.source import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="static cache: transformers compiles its decode step")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import transformers

    model = load_model(resolve_model(args.model, "dummy"), torch.bfloat16, torch.device("cuda"))
    result = measure_generate(model, torch.device("cuda"), args.batch_size, args.input_len, args.output_len,
                              args.compile)
    report = {**provenance("python3 benchmarks/hf_generate_peer.py " + " ".join(sys.argv[1:])),
              "model": args.model, "transformers": transformers.__version__, "result": result}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
