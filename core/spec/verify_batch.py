"""The TARGET_VERIFY ForwardBatch of a speculative step (scheduler.spec_step)."""
from __future__ import annotations

import torch

from jackfield.mem.device_copy import to_device
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.spec.tree import VerifyTrees


def build_verify_batch(reqs: list, batch, trees: VerifyTrees, slots: torch.Tensor, runner) -> ForwardBatch:
    """The TARGET_VERIFY ForwardBatch: request i computes its tree's nodes after its kv_len cached
    tokens, into `slots` (in order); logits for every node."""
    dev, table = runner.device, runner.req_to_token_pool.req_to_token
    sizes = trees.sizes
    prefix = [r.kv_len for r in reqs]
    offset = 0
    for r, n in zip(reqs, sizes):
        table[r.req_pool_idx, r.kv_len:r.kv_len + n] = slots[offset:offset + n].to(torch.int32)
        offset += n
    depths = trees.depths()
    positions = [p + d for p, ds in zip(prefix, depths) for d in ds]
    ids = [t for row in trees.tokens for t in row]
    seq_cpu = tuple(p + n for p, n in zip(prefix, sizes))
    ext_t = to_device(sizes, torch.int32, dev)
    start = torch.zeros_like(ext_t)
    start[1:] = torch.cumsum(ext_t, 0)[:-1]
    mask, indptr = trees.mask(dev)
    return ForwardBatch(
        mode=ForwardMode.TARGET_VERIFY, batch_size=len(reqs), input_ids=to_device(ids, torch.int64, dev),
        positions=to_device(positions, torch.int64, dev), req_pool_indices=batch.req_pool_indices,
        seq_lens=to_device(seq_cpu, torch.int32, dev), out_cache_loc=slots, req_to_token=table,
        kv_pool=runner.kv_pool, attn_backend=runner.attn_backend, seq_lens_cpu=seq_cpu,
        extend_prefix_lens=to_device(prefix, torch.int32, dev), extend_seq_lens=ext_t, extend_start_loc=start,
        extend_prefix_lens_cpu=tuple(prefix), extend_seq_lens_cpu=tuple(sizes),
        logits_indices=torch.arange(len(ids), device=dev), tree_mask=mask, tree_mask_indptr=indptr)
