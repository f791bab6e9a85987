"""Block configurations of the `triton` backend's extend (prefill) kernel on the Llama-3.1-8B attention
shape: which (BLOCK_M, BLOCK_N, num_warps, num_stages, heavy_first) is fastest for each batch of new
tokens over a cached prefix.

    python benchmarks/studies/tune_triton_extend.py [--out results.json]

Prints TFLOP/s of QK^T and PV over the causal region per configuration; the default is the first row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: attention_kernels
from attention_kernels import DTYPE, HEAD_DIM, HEADS, KV_HEADS, Setup, save_rows, time_ms
from jackfield.sdk import AttentionLayerInfo, ForwardMode

CONFIGS = [None, (64, 64, 4, 2, True), (64, 64, 4, 3, True), (64, 128, 4, 2, True), (128, 64, 8, 2, True),
           (128, 64, 8, 3, True), (128, 64, 4, 2, True), (128, 128, 8, 2, True), (128, 32, 4, 2, True),
           (128, 64, 8, 4, True)]
# (requests, context, new tokens): the offline benchmark's 16K prefill chunk, long prompts, a cached prefix
SHAPES = [(32, 512, 512), (8, 1024, 1024), (2, 8192, 8192), (64, 1050, 50)]


def causal_flops(batch: int, context: int, new: int) -> float:
    prefix = context - new
    return 4 * HEADS * HEAD_DIM * batch * (new * prefix + new * (new + 1) / 2)


def tune_shape(batch: int, context: int, new: int, page_size: int) -> list[dict]:
    from jackfield_plugins.attention.triton import TritonAttnBackend
    from jackfield_plugins.attention.triton_kernels.extend import extend_attention

    setup = Setup(batch, context, page_size)
    fb = setup.batch_of(TritonAttnBackend(setup.runtime()), ForwardMode.EXTEND, new)
    layer = AttentionLayerInfo(0, HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM ** -0.5)
    q = torch.randn(batch * new, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")

    def call(out: torch.Tensor, cfg) -> None:
        extend_attention(q, setup.pool.k_buffers[0], setup.pool.v_buffers[0], out, setup.req_to_token,
                         fb.req_pool_indices, fb.seq_lens, fb.extend_start_loc, fb.extend_seq_lens, new,
                         layer.scaling, config=cfg)

    ref = torch.empty_like(q)
    call(ref, None)
    flops, rows = causal_flops(batch, context, new), []
    for cfg in CONFIGS:
        out = torch.empty_like(q)
        try:
            call(out, cfg)
            ms = time_ms(lambda c=cfg, o=out: call(o, c))
        except Exception as exc:  # noqa: BLE001 - a configuration this GPU cannot run (shared memory)
            print(f"{cfg}: failed: {type(exc).__name__}: {exc}"[:200], flush=True)
            continue
        err = (out.float() - ref.float()).abs().max().item()
        rows.append({"batch": batch, "context": context, "new": new, "config": cfg, "us": ms * 1e3,
                     "tflops": flops / ms / 1e9, "max_abs_diff_vs_default": err})
        print(f"bs={batch:<3} ctx={context:<5} new={new:<5} cfg={cfg} {ms * 1e3:8.1f} us "
              f"{flops / ms / 1e9:6.1f} TFLOP/s  diff {err:.1e}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--page-size", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for shape in SHAPES:
        rows += tune_shape(*shape, args.page_size)
        torch.cuda.empty_cache()
    save_rows(args.out, "studies/tune_triton_extend.py", rows)


if __name__ == "__main__":
    main()
