"""Ranks in lockstep: rank 0's scheduler decides every batch once; the other ranks run it too.

SGLang's TP workers each run a scheduler fed the same broadcast requests; here the follower ranks
run no scheduler at all: before each forward, rank 0 broadcasts the batch (the ForwardBatch's
tensors and the rows of its request-to-token table) over the control group, and every follower
rebuilds the same ForwardBatch over its own KV pool (the same slots, its own heads) and runs the
same forward, so the ranks meet in the same collectives in the same order and can never diverge.
Only rank 0 samples: the LM head all-gathers the logits, and the followers drop theirs.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from jackfield.distributed.group import RankGroup
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.kv_cache import KVLayout
from jackfield.sdk.parallel import tp_kv_heads

TENSORS = ("input_ids", "positions", "req_pool_indices", "seq_lens", "out_cache_loc", "extend_prefix_lens",
           "extend_seq_lens", "extend_start_loc", "tree_mask", "tree_mask_indptr", "logits_indices")
VALUES = ("mode", "batch_size", "seq_lens_cpu", "extend_prefix_lens_cpu", "extend_seq_lens_cpu")


def rank_kv_layout(layout: KVLayout, tp_size: int) -> KVLayout:
    """What one rank's KV pool stores per token: its share of the KV heads (a latent layout, one
    shared vector, is never split)."""
    if tp_size == 1 or layout.v_in_k:
        return layout
    return dataclasses.replace(layout, num_kv_heads=tp_kv_heads(layout.num_kv_heads, tp_size))


def _moved(obj, device):
    """A frozen dataclass (or tensor) with every tensor field moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _moved(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj)
                                           if isinstance(getattr(obj, f.name), torch.Tensor)})
    return obj


class BatchBroadcaster:
    """Rank 0's side: `send` each batch before running it, `stop` once at shutdown.

    A batch goes out in two broadcasts: its host values (mode, sizes, the host copies of the
    lengths, each tensor's shape and dtype) as one object over the gloo control group, then every
    tensor and the batch's request-to-token rows packed into one int64 tensor over the layers' group
    (NCCL on GPU: ordered on the forward's stream, no host sync, so overlap scheduling keeps working)."""

    def __init__(self, group: RankGroup, req_to_token: torch.Tensor):
        self.group, self.req_to_token = group, req_to_token
        self.stopped = False

    def send(self, fb: ForwardBatch, readout=None) -> None:
        import torch.distributed as dist

        tensors = {name: getattr(fb, name) for name in TENSORS if getattr(fb, name) is not None}
        width = max(fb.seq_lens_cpu) if fb.seq_lens_cpu else int(fb.seq_lens.max()) if fb.batch_size else 0
        table = self.req_to_token[fb.req_pool_indices.long(), :width]
        meta = {name: getattr(fb, name) for name in VALUES}
        meta["tensors"] = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}
        meta["table"] = (tuple(table.shape), table.dtype)
        meta["readout"] = _moved(readout, torch.device("cpu"))
        dist.broadcast_object_list([meta], src=0, group=self.group.cpu_group)
        packed = torch.cat([t.reshape(-1).to(torch.int64) for t in (*tensors.values(), table)])
        dist.broadcast(packed, src=0, group=self.group.tp.group)

    def stop(self) -> None:
        """Release the followers (they return from `follow`)."""
        import torch.distributed as dist

        if not self.stopped:
            self.stopped = True
            dist.broadcast_object_list([None], src=0, group=self.group.cpu_group)


def receive(group: RankGroup, device: torch.device) -> tuple[dict, dict, torch.Tensor] | None:
    """A follower's side of `send`: (host values, tensors by name, request-to-token rows), or None
    when rank 0 stopped."""
    import torch.distributed as dist

    box = [None]
    dist.broadcast_object_list(box, src=0, group=group.cpu_group)
    meta = box[0]
    if meta is None:
        return None
    shapes = [*meta["tensors"].values(), meta["table"]]
    sizes = [math.prod(shape) for shape, _ in shapes]
    packed = torch.empty(sum(sizes), dtype=torch.int64, device=device)
    dist.broadcast(packed, src=0, group=group.tp.group)
    parts = [p.view(shape).to(dtype) for p, (shape, dtype) in zip(packed.split(sizes), shapes)]
    return meta, dict(zip(meta["tensors"], parts)), parts[-1]


def follow(runner, group: RankGroup) -> int:
    """A follower rank's loop: receive rank 0's batches and run them on `runner` until rank 0
    stops; returns the number of forwards run."""
    dev, table = runner.device, runner.req_to_token_pool.req_to_token
    count = 0
    while (batch := receive(group, dev)) is not None:
        meta, tensors, rows = batch
        if rows.numel():
            table[tensors["req_pool_indices"].long(), :rows.shape[1]] = rows
        fb = ForwardBatch(req_to_token=table, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend,
                          **{name: meta[name] for name in VALUES}, **tensors)
        if meta["readout"] is not None:
            runner.forward_reading(fb, _moved(meta["readout"], dev))
        else:
            runner.forward(fb)
        count += 1
    return count
