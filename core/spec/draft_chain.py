"""Chain drafting on the device: `steps` greedy draft tokens per request without a host round trip
between them, in DECODE forwards over a DraftRunner's KV (a chain is causal, so no tree mask), and
on CUDA replayed from a CUDA graph captured per batch size.

Request i's chain starts from the token `first[i]` (and, for EAGLE, the hidden state `hidden[i]`
its first draft position reads) right after its committed rows. Step s writes its row's K/V to a
temporary slot at position offset + committed + s, reads the model's output, takes the argmax as
the next token and feeds its hidden state forward. The temporary slots are freed afterwards; the
committed rows do not change. Returns the [bs, steps] tokens (the first draft token excluded: the
caller chose it from the catch-up forward's logits).
"""
from __future__ import annotations

import bisect

import torch

from jackfield.cuda_graph import capture
from jackfield.mem.device_copy import to_device
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode


class ChainInputs:
    """Device tensors of one chain call (static buffers when a graph replays it)."""

    def __init__(self, bs: int, steps: int, hidden_size: int | None, device, dtype):
        self.first = torch.zeros(bs, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(bs, hidden_size, dtype=dtype, device=device) if hidden_size else None
        self.rows = torch.zeros(bs, dtype=torch.int64, device=device)
        self.committed = torch.zeros(bs, dtype=torch.int64, device=device)  # rows before the chain
        self.offsets = torch.zeros(bs, dtype=torch.int64, device=device)    # position of row 0
        self.slots = torch.zeros(bs, steps, dtype=torch.int64, device=device)


def run_chain(runner, x: ChainInputs, steps: int, seq_lens_cpu: tuple[int, ...], graph: bool = False) -> torch.Tensor:
    """The chain's forwards (also the body a CUDA graph captures; `seq_lens_cpu` only sizes host
    metadata of eager runs)."""
    table, backend = runner.rows.req_to_token, runner.attn_backend
    bs = x.first.shape[0]
    tokens, hidden, out = x.first, x.hidden, []
    for s in range(steps):
        pos = x.committed + s
        table[x.rows, pos] = x.slots[:, s].to(torch.int32)
        fb = ForwardBatch(
            mode=ForwardMode.DECODE, batch_size=bs, input_ids=tokens, positions=x.offsets + pos,
            req_pool_indices=x.rows, seq_lens=(pos + 1).to(torch.int32), out_cache_loc=x.slots[:, s],
            req_to_token=table, kv_pool=runner.kv_pool, attn_backend=backend,
            seq_lens_cpu=tuple(n + s + 1 for n in seq_lens_cpu),
            extras={"spec_hidden_in": hidden} if hidden is not None else {})
        if not graph:
            backend.init_forward_metadata(fb)
        h = runner.model(fb.input_ids, fb.positions, fb)
        tokens = runner.model.compute_logits(h).argmax(dim=-1)
        hidden = fb.extras.get("spec_hidden_out", h) if hidden is not None else None
        out.append(tokens)
    return torch.stack(out, dim=1)


class ChainGraphs:
    """Chains of `steps` captured per batch size (CUDA): the backend's decode-graph metadata is
    shape-only, so one capture serves every replay of that size."""

    def __init__(self, runner, steps: int, max_bs: int, hidden_size: int | None):
        self.runner, self.steps = runner, steps
        self.sizes = [s for s in (1, 2, 4, 8, 16, 32) if s < max_bs] + [max_bs]
        self.max_bs = max_bs
        dev, dtype = runner.device, runner.dtype
        self.inputs = ChainInputs(max_bs, steps, hidden_size, dev, dtype)
        runner.attn_backend.init_cuda_graph_state(max_bs, max_bs)
        self.graphs, self.outputs, pool, stream = {}, {}, None, torch.cuda.Stream()
        with torch.inference_mode():
            for bs in reversed(self.sizes):
                x = self._view(bs)
                backend = runner.attn_backend
                backend.init_forward_metadata_capture(self._meta_batch(bs))
                self.graphs[bs], self.outputs[bs], pool = capture(
                    lambda _fb, x=x: run_chain(runner, x, steps, (1,) * bs, graph=True), None, pool, stream)

    def _view(self, bs: int) -> ChainInputs:
        v = ChainInputs.__new__(ChainInputs)
        for name, t in vars(self.inputs).items():
            setattr(v, name, t[:bs] if t is not None else None)
        return v

    def _meta_batch(self, bs: int) -> ForwardBatch:
        x, r = self._view(bs), self.runner
        return ForwardBatch(mode=ForwardMode.DECODE, batch_size=bs, input_ids=x.first, positions=x.committed,
                            req_pool_indices=x.rows, seq_lens=x.committed.to(torch.int32) + 1,
                            out_cache_loc=x.slots[:, 0], req_to_token=r.rows.req_to_token, kv_pool=r.kv_pool,
                            attn_backend=r.attn_backend, seq_lens_cpu=(1,) * bs)

    def run(self, x: ChainInputs) -> torch.Tensor:
        raw = x.first.shape[0]
        bs = self.sizes[bisect.bisect_left(self.sizes, raw)]
        v = self.inputs
        for name, t in vars(x).items():
            if t is not None:
                getattr(v, name)[:raw].copy_(t)
        if bs != raw:  # padded rows: request-table row 0, slot 0 (the reserved page)
            for name in ("rows", "committed", "offsets", "first", "slots"):
                getattr(v, name)[raw:bs].zero_()
        self.runner.attn_backend.init_forward_metadata_replay(self._meta_batch(bs))
        self.graphs[bs].replay()
        return self.outputs[bs][:raw]


def chain_inputs(runner, rids: list[str], first: torch.Tensor, hidden: torch.Tensor | None,
                 steps: int) -> tuple[ChainInputs, torch.Tensor] | None:
    """The inputs of a chain call for these requests and the temporary slots it writes (free them
    after), or None when the draft pool is short."""
    slots = runner.allocator.alloc(len(rids) * steps)
    if slots is None:
        return None
    seqs = [runner.seqs[rid] for rid in rids]
    x = ChainInputs.__new__(ChainInputs)
    dev = runner.device
    x.first, x.hidden = first, hidden
    x.rows = to_device([s.row for s in seqs], torch.int64, dev)
    x.committed = to_device([s.committed for s in seqs], torch.int64, dev)
    x.offsets = to_device([s.offset for s in seqs], torch.int64, dev)
    x.slots = slots.view(len(rids), steps)
    return x, slots
