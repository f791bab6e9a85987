"""MLA decode kernel bandwidth: one layer's latent decode at batch 64, context 2048 (defaults) for the
DeepSeek-V2-Lite (16 heads) and DeepSeek-V3 (128 heads) shapes, bf16, kv_lora_rank 512 + rope 64,
against the copy ceiling.

Each backend (`triton_mla`, `flashinfer_mla` where available) plans the batch once, then its
forward_decode is timed from one CUDA graph that alternates over two pools (each batch's latents are
151 MB at the defaults, beyond L2) with jackfield.bench.common.replay_ms. Achieved bandwidth counts the
latents read (batch x context x 576 x 2 bytes); the ceiling is a device-to-device copy of the same
bytes (read + written). Goal: >= 80% of the ceiling.

    python benchmarks/mla_decode.py --out benchmarks/results/mla-decode.json [--batch 64] [--context 2048]
        [--heads 16,128] [--backends triton_mla,flashinfer_mla] [--page-size 1]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from jackfield.bench.common import copy_gbps, provenance, replay_ms
from jackfield.sdk import AttentionLayerInfo, AttentionRuntime, ForwardBatch, ForwardMode, KVLayout, KVPool

LORA, ROPE = 512, 64


def backend_class(name: str):
    if name == "triton_mla":
        from jackfield_plugins.attention.triton_mla import TritonMLABackend as cls
    else:
        from jackfield_plugins.attention.flashinfer_mla import FlashInferMLABackend as cls
    return cls


def decode_setup(cls, heads: int, batch: int, context: int, page: int):
    """A pool with `batch` requests of `context` latents each on shuffled pages, the backend, its batch."""
    dev = torch.device("cuda")
    pages = batch * -(-context // page)
    pool = KVPool(pages, page, 1, 1, LORA + ROPE, torch.bfloat16, dev, layout=KVLayout.latent(LORA + ROPE, LORA))
    pool.k_buffer(0).normal_()
    table = torch.zeros(batch + 1, context + page, dtype=torch.int32, device=dev)
    order = torch.randperm(pages, device=dev) + 1
    per = -(-context // page)
    for r in range(batch):
        slots = (order[r * per:(r + 1) * per, None] * page + torch.arange(page, device=dev)).flatten()[:context]
        table[r + 1, :context] = slots.to(torch.int32)
    rt = AttentionRuntime(1, heads, 1, LORA + ROPE, torch.bfloat16, dev, page, pool, table, batch, context + page)
    backend = cls(rt)
    lens = [context] * batch
    fb = ForwardBatch(mode=ForwardMode.DECODE, batch_size=batch, input_ids=torch.zeros(batch, dtype=torch.int64,
                      device=dev), positions=torch.full((batch,), context - 1, device=dev),
                      req_pool_indices=torch.arange(1, batch + 1, device=dev),
                      seq_lens=torch.full((batch,), context, dtype=torch.int32, device=dev),
                      out_cache_loc=table[1:, context - 1].long(), req_to_token=table, kv_pool=pool,
                      attn_backend=backend, seq_lens_cpu=tuple(lens))
    layer = AttentionLayerInfo(0, heads, 1, LORA + ROPE, scaling=(128 + 64) ** -0.5, v_head_dim=LORA)
    q = torch.randn(batch, heads * (LORA + ROPE), device=dev).bfloat16()
    backend.init_forward_metadata(fb)
    backend.forward_decode(q, layer, fb)  # learns the scale, plans (flashinfer_mla)
    return lambda: backend.forward_decode(q, layer, fb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--heads", default="16,128")
    ap.add_argument("--backends", default="triton_mla,flashinfer_mla")
    ap.add_argument("--page-size", type=int, default=1)
    args = ap.parse_args()
    nbytes = args.batch * args.context * (LORA + ROPE) * 2
    ceiling = copy_gbps(nbytes)
    print(f"copy ceiling: {ceiling:.0f} GB/s ({nbytes / 1e6:.0f} MB read + written)")
    results = {**provenance("python3 benchmarks/mla_decode.py " + " ".join(sys.argv[1:])),
               "device": torch.cuda.get_device_name(), "batch": args.batch, "context": args.context,
               "page_size": args.page_size, "latent_bytes": nbytes, "copy_gbps": ceiling, "rows": []}
    for name in args.backends.split(","):
        cls = backend_class(name)
        if not cls.availability().ok:
            print(f"skipping {name}: {cls.availability().reason}")
            continue
        for heads in (int(h) for h in args.heads.split(",")):
            try:
                calls = [decode_setup(cls, heads, args.batch, args.context, args.page_size) for _ in range(2)]
                ms = replay_ms(calls)
            except Exception as exc:  # one backend failing must not lose the others' numbers
                print(f"{name} heads={heads}: {type(exc).__name__}: {exc}")
                results["rows"].append({"backend": name, "heads": heads, "error": f"{type(exc).__name__}: {exc}"})
                continue
            gbps = nbytes / ms / 1e6
            results["rows"].append({"backend": name, "heads": heads, "us": ms * 1e3, "gbps": gbps,
                                    "fraction_of_copy": gbps / ceiling})
            print(f"{name:>15} heads={heads:<4} {ms * 1e3:8.1f} us {gbps:7.0f} GB/s = {gbps / ceiling:5.1%} of copy",
                  flush=True)
            del calls
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
