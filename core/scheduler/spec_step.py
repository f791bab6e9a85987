"""Speculative decode steps: the running batch proposes drafts, verifies them in one target forward
(TARGET_VERIFY, a tree attention mask per request) and appends the accepted tokens.

A step, for the running batch B (after the in-flight forward, if any, has been processed: the
drafts need every request's last token, so speculative steps run serially even under overlap):

1. make room for one token per request exactly as a plain decode step would (retracting if
   needed), then ask the decoder for at most `budget(r)` draft nodes per request;
2. allocate KV slots for each request's root + nodes (falling back to the root alone when the pool
   is short), build the verify ForwardBatch (positions = KV length + depth) and run it; a
   constrained request's nodes are sampled under the grammar mask of their own paths
   (jackfield.spec.grammar_tree), and its accepted tokens advance its grammar as they are appended;
3. the target's pick at every node: the sampler runs on every node's logits with the request's own
   parameters and, for seeded requests, the noise of the node's output position, so seeded and
   greedy requests produce exactly what plain decoding would. Starting at the root, the path moves
   to the child holding the target's pick while there is one (`VerifyTrees.accept`). For a sampled
   request this is rejection sampling with a deterministic draft: a draft token x drawn with
   probability 1 is accepted with probability min(1, p(x) / 1) = p(x), and on rejection the residual
   p with x removed is sampled next, which together is one draw from p matched against the
   children: every emitted token is a draw from the target's distribution at its true prefix;
4. the path's KV is moved to the positions after the request's KV (nodes off the first branch
   are copied), the slots of rejected nodes are freed, and the path's tokens plus the target's
   pick at its last node are appended (stopping at a finish: the KV past it is freed on release).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from jackfield.mem.device_copy import to_device
from jackfield.scheduler.forward_job import logprob_rows
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.spec import SpecInput, TargetStates
from jackfield.sdk.grammar import allocate_bitmask
from jackfield.spec.grammar_tree import fill_tree_bitmask
from jackfield.spec.load import LoadPolicy
from jackfield.spec.stats import SpecStats
from jackfield.spec.tree import TreeGrid, VerifyTrees
from jackfield.spec.verify_batch import build_verify_batch


class SpecController:
    """The scheduler's side of a speculative decoder: when to speculate, and the step itself."""

    def __init__(self, sched, decoder, settings):
        self.sched, self.decoder = sched, decoder
        self.max_drafts = decoder.runtime.max_drafts
        self.policy = LoadPolicy(enabled=settings.speculative_load_aware)
        self.stats = SpecStats()
        self.last_was_spec = False

    # ---- when ---------------------------------------------------------------------------------
    def eligible(self, r) -> bool:
        """Requests with penalties decode plainly: their logits depend on every earlier output token,
        so verify rows would need per-node penalty state."""
        p = r.sampling_params
        return p.speculative and not p.needs_penalties

    def budget(self, r) -> int:
        if not self.eligible(r):
            return 0
        left = r.sampling_params.max_new_tokens - len(r.output_ids) - 1
        room = self.sched.runner.context_len - r.kv_len - 1
        return max(0, min(self.max_drafts, left, room))

    def wants_step(self) -> bool:
        """Speculate this step: a running batch, no prefill waiting its turn, and the load policy."""
        s = self.sched
        if s.running is None or not len(s.running):
            return False
        if (s.waiting or s.chunked_req is not None) and self.last_was_spec:
            return False  # a prefill is waiting: it runs between two speculative steps
        if not any(self.eligible(r) for r in s.running.reqs):
            return False  # nobody may speculate: a plain decode step, overlapped as usual
        if any(r.adapter is not None for r in s.running.reqs):
            return False  # verify forwards carry no LoRA slots: a batch with an adapter decodes plainly
        return self.policy.speculate(len(s.running))

    # ---- the step -----------------------------------------------------------------------------
    def step(self) -> bool:
        """Run one speculative step of the running batch; False when it did not run."""
        s = self.sched
        s.sync()
        batch = s.running
        if batch is None or not len(batch):
            return False
        if not s.admission.reserve_decode(batch, s.finished_out, alone=s.chunked_req is None):
            return True
        t0 = time.perf_counter()
        reqs = list(batch.reqs)
        budgets = tuple(self.budget(r) for r in reqs)
        trees = self._propose(reqs, budgets)
        graphs = s.runner.verify_graphs
        if graphs is not None and len(reqs) <= graphs.max_bs:
            trees = trees.padded(graphs.t)
        slots = self._alloc(reqs, trees)
        if slots is None:  # the pool is short: verify the roots alone (the reserve guarantees them)
            trees = VerifyTrees([t[:1] for t in trees.tokens], [p[:1] for p in trees.parents])
            slots = self._alloc(reqs, trees)
        fb = build_verify_batch(reqs, batch, trees, slots, s.runner)
        logits = s.runner.forward(fb)
        g = trees.grid
        depths = g.flat(g.depths)
        rows = np.repeat(np.arange(len(reqs)), g.sizes)
        sampling = batch.sampling.filter(torch.from_numpy(rows))
        out_lens = batch.output_lens.index_select(0, to_device(rows, torch.int64, s.device)) + \
            to_device(depths, torch.int64, s.device)
        counted = to_device(depths == 0, torch.bool, s.device)
        out = s.runner.sampler.sample(logits, sampling, out_lens, counted, bitmask=self._grammar_mask(reqs, trees))
        picks = g.gather(out.next_token_ids.to("cpu", torch.int64).numpy())  # [B, N]: the target's token per node
        paths = trees.accept(picks)
        width = picks.shape[1]
        path_a = np.array([p + [p[-1]] * (width - len(p)) for p in paths], dtype=np.int64).reshape(len(paths), width)
        lens = np.array([len(p) for p in paths], dtype=np.int64)
        self._commit_kv(reqs, fb, g, path_a, lens)
        if self.decoder.needs_hidden_states:
            self._observe_paths(reqs, fb, g, path_a, lens)
        emitted = self._append(reqs, trees, paths, picks.tolist(), logprob_rows(out), budgets)
        nxt = np.take_along_axis(picks, path_a[:, -1:], 1)[:, 0]  # the target's pick at each path's last node
        s.future_ids[batch.req_pool_indices] = to_device(nxt, torch.int64, s.device)
        batch.output_lens = batch.output_lens + to_device(emitted, torch.int64, s.device)
        self.decoder.on_verified(tuple(r.rid for r in reqs), tuple(len(p) - 1 for p in paths))
        s.stats.record_step(0, sum(emitted))
        self.policy.record_spec(len(reqs), time.perf_counter() - t0, sum(emitted) / len(reqs))
        self._finish(batch)
        return True

    def _grammar_mask(self, reqs: list, trees: VerifyTrees) -> torch.Tensor | None:
        """The grammar bitmask of every node (jackfield.spec.grammar_tree) when a request of the
        batch is constrained: each node is sampled under the mask its path leaves the grammar in."""
        if all(r.grammar is None for r in reqs):
            return None
        mask = allocate_bitmask(sum(trees.sizes), self.sched.vocab_size)
        row = 0
        for r, tokens, parents, n, real in zip(reqs, trees.tokens, trees.parents, trees.sizes, trees.real_sizes):
            if r.grammar is not None:
                fill_tree_bitmask(r.grammar, tokens[:real], parents[:real], mask, row)
            row += n
        return mask if self.sched.device.type == "cpu" else mask.to(self.sched.device, non_blocking=True)

    def _propose(self, reqs: list, budgets: tuple[int, ...]) -> VerifyTrees:
        s = self.sched
        roots = [r.output_ids[-1] for r in reqs]
        if not any(budgets):
            return VerifyTrees([[t] for t in roots], [[-1] for _ in roots])
        spec_input = SpecInput(tuple(r.rid for r in reqs), tuple(r.token_view() for r in reqs), budgets)
        proposal = self.decoder.propose(spec_input)
        return VerifyTrees.from_proposal(roots, proposal, budgets, s.vocab_size, self.decoder.name)

    def _alloc(self, reqs: list, trees: VerifyTrees) -> torch.Tensor | None:
        s = self.sched
        sizes = trees.sizes
        s.admission._evict(sum(sizes) + s.runner.page_size * len(sizes))
        lens = [r.kv_len for r in reqs]
        if s.runner.page_size == 1:
            return s.runner.allocator.alloc(sum(sizes))
        table = s.runner.req_to_token_pool.req_to_token
        pool = to_device([r.req_pool_idx for r in reqs], torch.int64, s.device)
        last = table[pool, (to_device(lens, torch.int64, s.device) - 1).clamp(min=0)].long()
        return s.runner.allocator.alloc_extend(lens, sizes, last)

    def _commit_kv(self, reqs: list, fb: ForwardBatch, g: TreeGrid, path: np.ndarray, lens: np.ndarray) -> None:
        """Move each accepted path's KV to the slots after the request's KV; free the rejected nodes'.
        `path[i, t]` is the node at depth t of request i's path (`lens[i]` long, padded with its last
        node); slots are named by flat indices computed here and read on the device in one go."""
        s = self.sched
        runner, dev, page = s.runner, s.device, s.runner.page_size
        depth = np.arange(path.shape[1])
        on = depth < lens[:, None]
        moved = on & (path != depth)
        loc = fb.out_cache_loc
        if moved.any():
            src = to_device((g.starts[:, None] + path)[moved], torch.int64, dev)
            dst = to_device((g.starts[:, None] + depth)[moved], torch.int64, dev)
            pool, src_t, dst_t = runner.kv_pool, loc[src], loc[dst]
            for layer in range(pool.num_layers):
                pool.k_buffers[layer][dst_t] = pool.k_buffers[layer][src_t]
                pool.v_buffers[layer][dst_t] = pool.v_buffers[layer][src_t]
        old = np.array([r.kv_len for r in reqs], dtype=np.int64)
        new = old + lens
        if page == 1:
            rejected = (g.starts[:, None] + depth)[g.valid & ~on]
            if rejected.size:
                runner.allocator.free(loc[to_device(rejected, torch.int64, dev)])
        else:  # the pages past the path's last one: their first slots, read from the table rows
            first = (new + page - 1) // page * page
            cols = first[:, None] + np.arange(-(-path.shape[1] // page) + 1) * page
            keep = np.flatnonzero(cols < (old + g.sizes)[:, None])
            if keep.size:
                table = runner.req_to_token_pool.req_to_token
                heads = table[fb.req_pool_indices[:, None], to_device(np.minimum(cols, table.shape[1] - 1), torch.int64, dev)]
                pages = heads.flatten().index_select(0, to_device(keep, torch.int64, dev)).to(torch.int64) // page
                runner.allocator.free((pages[:, None] * page + torch.arange(page, device=pages.device)).flatten())
        for r, kv in zip(reqs, new.tolist()):
            r.kv_len = kv

    def _append(self, reqs: list, trees: VerifyTrees, paths: list[list[int]], picks: list[list[int]], logprobs,
                budgets) -> list[int]:
        """Append each request's accepted tokens and the target's pick after them; the speculation
        counters count the requests that could speculate (budget > 0)."""
        s = self.sched
        emitted = []
        for r, tree_tokens, path, pick, start, n, budget in zip(reqs, trees.tokens, paths, picks,
                                                                trees.grid.starts.tolist(), trees.real_sizes, budgets):
            tokens = [tree_tokens[node] for node in path[1:]] + [pick[path[-1]]]
            count = 0
            for token, node in zip(tokens, path):  # the row whose pick each emitted token is
                s._append_token(r, token, logprobs, start + node)
                count += 1
                if r.finished:
                    break
            emitted.append(count)
            if not budget:
                continue
            r.spec_verify_ct += 1
            r.spec_proposed += n - 1
            r.spec_accepted += len(path) - 1
            r.spec_emitted += count
            self.stats.record(n - 1, len(path) - 1, count)
        return emitted

    def _finish(self, batch) -> None:
        s = self.sched
        finished = [r for r in batch.reqs if r.finished]
        for r in finished:
            s.releaser.release(r, frozenset())
        if finished:
            batch.filter([i for i, r in enumerate(batch.reqs) if not r.finished])
            s.finished_out += finished

    # ---- hidden states for decoders that read them (EAGLE) ---------------------------------------
    def _observe_paths(self, reqs: list, fb: ForwardBatch, g: TreeGrid, path: np.ndarray, lens: np.ndarray) -> None:
        hidden = fb.extras.get("spec_hidden")
        rows = (g.starts[:, None] + path)[np.arange(path.shape[1]) < lens[:, None]]
        sel = hidden.index_select(0, to_device(rows, torch.int64, hidden.device))
        counts = lens.tolist()
        self.decoder.observe(TargetStates(tuple(r.rid for r in reqs), tuple(r.kv_len - n for r, n in zip(reqs, counts)),
                                          tuple(counts), sel))

    def observe_job(self, job) -> None:
        """After a plain forward (prefill chunk, mixed or decode step): the hidden states of the
        positions it computed, for the requests still running (called before its tokens are
        appended, so each request's KV length already counts this forward)."""
        hidden = job.fb.extras.get("spec_hidden")
        if hidden is None:
            return
        ids, starts, lengths, rows = [], [], [], []
        offset = 0
        for r, kv, ext in zip(job.extend_reqs, job.extend_kv, job.fb.extend_seq_lens_cpu):
            if r.req_pool_idx is not None and not r.finished:
                ids.append(r.rid)
                starts.append(kv - ext)
                lengths.append(ext)
                rows.extend(range(offset, offset + ext))
            offset += ext
        for r in job.decode_reqs:
            if r.req_pool_idx is not None and not r.finished:
                ids.append(r.rid)
                starts.append(len(r.origin_input_ids) + len(r.output_ids) - 1)
                lengths.append(1)
                rows.append(offset)
            offset += 1
        if ids:
            sel = hidden.index_select(0, to_device(rows, torch.int64, hidden.device))
            self.decoder.observe(TargetStates(tuple(ids), tuple(starts), tuple(lengths), sel))


