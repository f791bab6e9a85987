"""DraftRunner: a draft model (a smaller LM, or an EAGLE head) with its own KV cache, run through
the same machinery as the target: a KVPool, a TokenAllocator, a request-to-token table and an
attention backend of the target's kind, fed ForwardBatches in TARGET_VERIFY mode.

Per request (by id) the runner holds the KV of `committed` rows: tokens the target has verified.
One `forward` computes, per request, a list of new rows given as a tree (parents index earlier new
rows, -1 hangs a row below the last committed one): the first `commit[i]` rows of request i, a
chain, become committed; the others (draft-tree nodes) get KV slots only for this forward and are
freed right after it. Row r of request i sits at position `offset + committed + depth(r)`, where
`offset` is the position of the request's first row (EAGLE: the first position it has states for).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jackfield.mem.allocator import TokenAllocator
from jackfield.mem.device_copy import to_device
from jackfield.mem.req_to_token import ReqToTokenPool
from jackfield.sdk.attention import AttentionRuntime
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.sdk.kv_cache import KVPool
from jackfield.spec.tree import VerifyTrees


@dataclass
class _Seq:
    row: int
    offset: int
    committed: int = 0


class DraftRunner:
    def __init__(self, model: torch.nn.Module, config, attn_cls: type, num_tokens: int, max_requests: int,
                 context_len: int, device: torch.device, dtype: torch.dtype):
        self.model, self.config, self.device = model, config, device
        cfg = config
        self.kv_pool = KVPool(num_tokens, 1, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype, device)
        self.allocator = TokenAllocator(num_tokens, 1, device)
        self.rows = ReqToTokenPool(max_requests, context_len + 1, device)
        runtime = AttentionRuntime(cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, dtype, device, 1,
                                   self.kv_pool, self.rows.req_to_token, max_requests, context_len + 1)
        self.attn_backend = attn_cls(runtime)
        self.seqs: dict[str, _Seq] = {}
        self.chain_graphs = None
        self.dtype = dtype

    # ---- per-request state ----------------------------------------------------------------------
    def committed(self, rid: str) -> int:
        """Rows of `rid` in the draft KV (0 for a request the runner does not hold)."""
        seq = self.seqs.get(rid)
        return seq.committed if seq else 0

    def offset(self, rid: str) -> int | None:
        seq = self.seqs.get(rid)
        return seq.offset if seq else None

    def start(self, rid: str, offset: int = 0) -> bool:
        """Hold a new request whose first row sits at position `offset`; False if no row is free."""
        self.release(rid)
        row = self.rows.alloc()
        if row is None:
            return False
        self.seqs[rid] = _Seq(row, offset)
        return True

    def release(self, rid: str) -> None:
        seq = self.seqs.pop(rid, None)
        if seq is None:
            return
        if seq.committed:
            self.allocator.free(self.rows.req_to_token[seq.row, :seq.committed].to(torch.int64))
        self.rows.free(seq.row)

    def holds(self, rid: str) -> bool:
        return rid in self.seqs

    # ---- forward --------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, rids: list[str], tokens: list[list[int]], parents: list[list[int]], commit: list[int],
                logit_rows: list[int], hidden_in: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Run the new rows of every request (see the module docstring); returns (hidden [N, H] of
        every row, in order, and the logits [len(logit_rows), V] of the rows `logit_rows` names),
        or None when the KV pool is short (nothing is then changed). `hidden_in` [N, *] reaches the
        model as fb.extras["spec_hidden_in"]; a model may leave the hidden state its next rows read
        in fb.extras["spec_hidden_out"] (EAGLE-3: before its final norm), returned instead."""
        seqs = [self.seqs[rid] for rid in rids]
        sizes = [len(t) for t in tokens]
        slots = self.allocator.alloc(sum(sizes))
        if slots is None:
            return None
        trees = VerifyTrees([[0] + t for t in tokens], [[-1] + [p + 1 for p in ps] for ps in parents])
        table = self.rows.req_to_token
        positions, ids, off = [], [], 0
        for seq, tok, depths, n in zip(seqs, tokens, trees.depths(), sizes):
            table[seq.row, seq.committed:seq.committed + n] = slots[off:off + n].to(torch.int32)
            positions += [seq.offset + seq.committed + d - 1 for d in depths[1:]]
            ids += tok
            off += n
        # the mask of the new rows alone: drop each tree's synthetic root (row 0 / column 0)
        full, _ = trees.mask(torch.device("cpu"))
        blocks, indptr, start = [], [0], 0
        for n in sizes:
            m = full[start:start + (n + 1) ** 2].view(n + 1, n + 1)[1:, 1:]
            start += (n + 1) ** 2
            blocks.append(m.reshape(-1))
            indptr.append(indptr[-1] + n * n)
        dev = self.device
        prefix = [s.committed for s in seqs]
        seq_cpu = tuple(p + n for p, n in zip(prefix, sizes))
        ext = to_device(sizes, torch.int32, dev)
        start_loc = torch.zeros_like(ext)
        start_loc[1:] = torch.cumsum(ext, 0)[:-1]
        fb = ForwardBatch(
            mode=ForwardMode.TARGET_VERIFY, batch_size=len(rids), input_ids=to_device(ids, torch.int64, dev),
            positions=to_device(positions, torch.int64, dev),
            req_pool_indices=to_device([s.row for s in seqs], torch.int64, dev),
            seq_lens=to_device(seq_cpu, torch.int32, dev), out_cache_loc=slots, req_to_token=table,
            kv_pool=self.kv_pool, attn_backend=self.attn_backend, seq_lens_cpu=seq_cpu,
            extend_prefix_lens=to_device(prefix, torch.int32, dev), extend_seq_lens=ext, extend_start_loc=start_loc,
            extend_prefix_lens_cpu=tuple(prefix), extend_seq_lens_cpu=tuple(sizes),
            tree_mask=torch.cat(blocks).to(dev) if blocks else torch.zeros(0, dtype=torch.bool, device=dev),
            tree_mask_indptr=to_device(indptr, torch.int64, dev),
            extras={"spec_hidden_in": hidden_in} if hidden_in is not None else {})
        self.attn_backend.init_forward_metadata(fb)
        hidden = self.model(fb.input_ids, fb.positions, fb)
        logits = self.model.compute_logits(hidden[to_device(logit_rows, torch.int64, dev)])
        hidden = fb.extras.get("spec_hidden_out", hidden)
        temp, off = [], 0
        for seq, n, c in zip(seqs, sizes, commit):
            seq.committed += c
            temp.append(slots[off + c:off + n])
            off += n
        if temp:
            self.allocator.free(torch.cat(temp))
        return hidden, logits

    def free_tokens(self) -> int:
        return self.allocator.available_size()

    # ---- chains (jackfield.spec.draft_chain) ----------------------------------------------------
    def enable_chain_graphs(self, steps: int, max_bs: int, hidden_size: int | None = None) -> bool:
        """Capture chains of `steps` in CUDA graphs (CUDA, a backend that captures decode); False
        where they cannot be."""
        if self.device.type != "cuda" or not self.attn_backend.supports_cuda_graph or steps < 1:
            return False
        from jackfield.spec.draft_chain import ChainGraphs

        self.chain_graphs = ChainGraphs(self, steps, max_bs, hidden_size)
        return True

    @torch.inference_mode()
    def chain(self, rids: list[str], first: torch.Tensor, steps: int,
              hidden: torch.Tensor | None = None) -> torch.Tensor | None:
        """`steps` greedy tokens per request after the device tensor `first` [bs] (EAGLE: with the
        hidden states [bs, H] the first position reads), nothing committed; [bs, steps] on the
        device, or None when the draft pool is short. Replayed from a CUDA graph when one fits."""
        from jackfield.spec.draft_chain import chain_inputs, run_chain

        prep = chain_inputs(self, rids, first, hidden, steps)
        if prep is None:
            return None
        x, slots = prep
        graphs = self.chain_graphs
        if graphs is not None and graphs.steps == steps and len(rids) <= graphs.max_bs:
            out = graphs.run(x)
        else:
            out = run_chain(self, x, steps, tuple(self.seqs[rid].committed for rid in rids))
        self.allocator.free(slots)
        return out
