"""The TARGET_VERIFY ForwardBatch of a speculative step (scheduler.spec_step)."""
from __future__ import annotations

import numpy as np
import torch

from jackfield.mem.device_copy import to_device
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.spec.tree import VerifyTrees


def build_verify_batch(reqs: list, batch, trees: VerifyTrees, slots: torch.Tensor, runner) -> ForwardBatch:
    """The TARGET_VERIFY ForwardBatch: request i computes its tree's nodes after its kv_len cached
    tokens, into `slots` (in order); logits for every node. Built from the trees' grid with one
    array per field (no per-request tensor operation)."""
    dev, table = runner.device, runner.req_to_token_pool.req_to_token
    g = trees.grid
    sizes = trees.sizes
    prefix = [r.kv_len for r in reqs]
    prefix_a = np.array(prefix, dtype=np.int64)
    columns = g.flat(prefix_a[:, None] + np.arange(g.tokens.shape[1]))  # each node's column in its table row
    positions = g.flat(prefix_a[:, None] + g.depths)
    rows = batch.req_pool_indices.repeat_interleave(to_device(g.sizes, torch.int64, batch.req_pool_indices.device),
                                                    output_size=sum(sizes))  # (sized: no device sync)
    table[rows.to(table.device), to_device(columns, torch.int64, table.device)] = slots.to(torch.int32)
    seq_cpu = tuple(p + n for p, n in zip(prefix, sizes))
    ext_t = to_device(g.sizes, torch.int32, dev)
    start = to_device(g.starts, torch.int32, dev)
    mask, indptr = trees.mask(dev)
    ids = g.flat(g.tokens)
    return ForwardBatch(
        mode=ForwardMode.TARGET_VERIFY, batch_size=len(reqs), input_ids=to_device(ids, torch.int64, dev),
        positions=to_device(positions, torch.int64, dev), req_pool_indices=batch.req_pool_indices,
        seq_lens=to_device(seq_cpu, torch.int32, dev), out_cache_loc=slots, req_to_token=table,
        kv_pool=runner.kv_pool, attn_backend=runner.attn_backend, seq_lens_cpu=seq_cpu,
        extend_prefix_lens=to_device(prefix_a, torch.int32, dev), extend_seq_lens=ext_t, extend_start_loc=start,
        extend_prefix_lens_cpu=tuple(prefix), extend_seq_lens_cpu=tuple(sizes),
        logits_indices=torch.arange(ids.size, device=dev), tree_mask=mask, tree_mask_indptr=indptr)
