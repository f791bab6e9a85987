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
import logging

import torch

from jackfield.distributed.group import RankGroup
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.kv_cache import KVLayout
from jackfield.sdk.parallel import tp_kv_heads

log = logging.getLogger(__name__)
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
    """Rank 0's side: `send` each batch before running it, `stop` once at shutdown."""

    def __init__(self, group: RankGroup, req_to_token: torch.Tensor):
        self.group, self.req_to_token = group, req_to_token
        self.stopped = False

    def _broadcast(self, msg) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list([msg], src=0, group=self.group.cpu_group)

    def send(self, fb: ForwardBatch, readout=None) -> None:
        cpu = torch.device("cpu")
        width = max(fb.seq_lens_cpu) if fb.seq_lens_cpu else int(fb.seq_lens.max()) if fb.batch_size else 0
        msg = {name: _moved(getattr(fb, name), cpu) for name in TENSORS}
        msg.update({name: getattr(fb, name) for name in VALUES})
        msg["table"] = self.req_to_token[fb.req_pool_indices.long(), :width].cpu()
        msg["readout"] = _moved(readout, cpu)
        self._broadcast(msg)

    def stop(self) -> None:
        """Release the followers (they return from `follow`)."""
        if not self.stopped:
            self.stopped = True
            self._broadcast(None)


def follow(runner, group: RankGroup) -> int:
    """A follower rank's loop: receive rank 0's batches and run them on `runner` until rank 0
    stops; returns the number of forwards run."""
    import torch.distributed as dist

    dev, table = runner.device, runner.req_to_token_pool.req_to_token
    count = 0
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=group.cpu_group)
        msg = box[0]
        if msg is None:
            return count
        rows = msg["req_pool_indices"].long()
        width = msg["table"].shape[1]
        if width:
            table[rows.to(dev), :width] = msg["table"].to(dev)
        fields = {name: _moved(msg[name], dev) for name in TENSORS}
        fields.update({name: msg[name] for name in VALUES})
        fb = ForwardBatch(req_to_token=table, kv_pool=runner.kv_pool, attn_backend=runner.attn_backend, **fields)
        if msg["readout"] is not None:
            runner.forward_reading(fb, _moved(msg["readout"], dev))
        else:
            runner.forward(fb)
        count += 1
