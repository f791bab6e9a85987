"""Block configurations of the `triton` backend's decode kernel, timed on the Llama-3.1-8B attention
shape: which (BLOCK_N, num_warps, num_stages) reads the KV fastest at each batch and context.

    python benchmarks/studies/tune_triton_decode.py [--out results.json] [--shapes 256x640,...] [--splits 1,2]

The split count is the backend's own choice for the shape (as in a CUDA graph captured for that
batch size) unless --splits lists others. Prints GB/s of K/V read per configuration; the default is
the first row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: attention_kernels
from attention_kernels import DTYPE, HEAD_DIM, HEADS, KV_HEADS, Setup, save_rows, time_ms
from jackfield.sdk import AttentionLayerInfo, ForwardMode

CONFIGS = [(64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 2), (64, 8, 3), (32, 4, 2), (32, 4, 3), (128, 8, 2), (128, 8, 3)]
SHAPES = [(1, 8192), (16, 2048), (64, 2048), (256, 512), (256, 640), (256, 1024), (256, 2048)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--shapes", help="BATCHxCONTEXT,... (default: a grid from batch 1 to 256)")
    ap.add_argument("--splits", help="split counts to try besides the backend's choice, e.g. 1,2,4")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    from jackfield_plugins.attention.triton import TritonAttnBackend
    from jackfield_plugins.attention.triton_kernels.decode import decode_attention

    rows = []
    for batch, context in shapes:
        setup = Setup(batch, context, args.page_size)
        backend = TritonAttnBackend(setup.runtime())
        fb = setup.batch_of(backend, ForwardMode.DECODE, 1)
        backend.init_cuda_graph_state(batch, batch)
        backend.init_forward_metadata_replay(fb)
        meta, layer = backend.meta, AttentionLayerInfo(0, HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5)
        q = torch.randn(batch, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
        out = torch.empty_like(q)
        kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
        extra = [int(v) for v in args.splits.split(",")] if args.splits else []
        for splits in [meta.num_splits] + [v for v in extra if v != meta.num_splits]:
            mid_o = torch.empty(batch, HEADS, splits, HEAD_DIM, dtype=torch.float32, device="cuda")
            mid_lse = torch.empty(batch, HEADS, splits, dtype=torch.float32, device="cuda")
            for cfg in CONFIGS:
                def run(cfg=cfg, splits=splits, mid_o=mid_o, mid_lse=mid_lse):
                    decode_attention(q, setup.pool.k_buffers[0], setup.pool.v_buffers[0], out, setup.req_to_token,
                                     fb.req_pool_indices, fb.seq_lens, mid_o, mid_lse, splits, layer.scaling,
                                     config=cfg)
                ms = time_ms(run, cuda_graph=True)
                rows.append({"batch": batch, "context": context, "splits": splits, "config": cfg,
                             "us": ms * 1e3, "gbps": kv_bytes / ms / 1e6})
                print(f"bs={batch:<4} ctx={context:<5} splits={splits:<3} cfg={cfg} {ms * 1e3:8.1f} us "
                      f"{kv_bytes / ms / 1e6:8.1f} GB/s", flush=True)
        del setup
        torch.cuda.empty_cache()
    save_rows(args.out, "studies/tune_triton_decode.py", rows)


if __name__ == "__main__":
    main()
