"""Admission control: which waiting requests join the next prefill, and memory for decode steps.

Budgets follow SGLang's PrefillAdder: a new request needs its extend tokens plus a reserve for the
tokens it may still generate; running requests reserve their remaining tokens scaled by the
new-token ratio, which decays while no retraction happens and jumps back up after one. A request
that does not fit the chunk budget is cut into page-aligned chunks (one chunked request at a time);
only its first chunk has to fit. When nothing else holds KV, the head request is admitted without
the future reserve, so a request larger than the reserve rules allow still runs (and is aborted only
if it outgrows the whole pool).
"""
from __future__ import annotations

import torch

from jackfield.io_struct import FinishReason
from jackfield.scheduler.req import Req

CLIP_MAX_NEW_TOKENS = 4096


def reject_reason(req: Req, runner) -> FinishReason | None:
    """Why a new request finishes at once (abort, or length for max_new_tokens 0), else None."""
    n_in, max_new = len(req.origin_input_ids), req.sampling_params.max_new_tokens
    if n_in + max_new > runner.context_len:
        return FinishReason("abort", message=(
            f"prompt ({n_in} tokens) + max_new_tokens exceeds the context length "
            f"{runner.context_len} ({n_in + max_new} requested)"))
    if n_in + runner.page_size >= runner.max_total_tokens:
        return FinishReason("abort", message=(
            f"prompt ({n_in} tokens) does not fit the KV cache ({runner.max_total_tokens} tokens)"))
    if not n_in:
        return FinishReason("abort", message="the prompt is empty")
    vocab = runner.config.vocab_size
    bad = next((t for t in req.origin_input_ids if not 0 <= t < vocab), None)
    if bad is not None:  # checked here too, so no client path can crash a whole batch's forward
        return FinishReason("abort", message=f"prompt token id {bad} is outside the vocabulary [0, {vocab})")
    if max_new == 0 and req.next_input_logprob is None and req.pooling is None:
        return FinishReason("length")  # nothing to compute
    return None


class Admission:
    def __init__(self, scheduler, settings):
        self.sched = scheduler
        self.init_ratio = min(0.7 * settings.schedule_conservativeness, 1.0)
        self.min_ratio = self.init_ratio * 0.14
        self.decay = (self.init_ratio - self.min_ratio) / 600
        self.new_token_ratio = self.init_ratio
        self.chunk_size = settings.chunked_prefill_size if settings.chunked_prefill_size > 0 else None
        self.max_prefill_tokens = settings.max_prefill_tokens
        self.no_slot = torch.full((1,), -1, dtype=torch.int64, device=scheduler.device)  # "no cached token"

    # ---- memory helpers ---------------------------------------------------------------------------
    def _free_tokens(self) -> int:
        s = self.sched
        return s.runner.allocator.available_size() + s.tree_cache.evictable_size()

    def _evict(self, need: int) -> None:
        s = self.sched
        avail = s.runner.allocator.available_size()
        if avail < need:
            s.stats.evicted_tokens += s.tree_cache.evict(need - avail)

    def _alloc(self, prefix_lens: list[int], ext_lens: list[int], last_locs: torch.Tensor) -> torch.Tensor | None:
        s = self.sched
        self._evict(sum(ext_lens) + s.runner.page_size * len(ext_lens))
        if s.runner.page_size == 1:
            return s.runner.allocator.alloc(sum(ext_lens))
        return s.runner.allocator.alloc_extend(prefix_lens, ext_lens, last_locs)

    def _running_reserve(self) -> int:
        s = self.sched
        reqs = list(s.running.reqs) if s.running is not None else []
        return int(sum(min(r.sampling_params.max_new_tokens - len(r.output_ids), CLIP_MAX_NEW_TOKENS)
                       for r in reqs) * self.new_token_ratio)

    def _last_loc(self, r: Req) -> torch.Tensor:
        """[slot of r's last cached token] (or [-1]) as a device tensor: read without a host sync."""
        if r.kv_len == 0:
            return self.no_slot
        return self.sched.runner.req_to_token_pool.req_to_token[r.req_pool_idx, r.kv_len - 1:r.kv_len]

    # ---- prefill ------------------------------------------------------------------------------------
    def schedule_prefill(self, num_running: int):
        """Pick requests for one extend forward; returns (reqs, slots) or None.

        Each chosen request has `extend_len` set and holds slots for [kv_len, kv_len + extend_len).
        Returns None without admitting anything when the chunked request's next chunk does not fit.
        """
        s = self.sched
        if not s.waiting and s.chunked_req is None:
            return None
        page = s.runner.page_size
        rem_chunk = self.chunk_size or 1 << 62
        rem_input = self.max_prefill_tokens
        rem_total = self._free_tokens() - self._running_reserve()
        chosen: list[Req] = []
        slot_parts: list[torch.Tensor] = []
        if s.chunked_req is not None:
            r = s.chunked_req
            r.extend_len = min(r.remaining_prefill, rem_chunk)
            if r.extend_len < r.remaining_prefill:
                r.extend_len = max(page, r.extend_len // page * page)
            slots = self._alloc([r.kv_len], [r.extend_len], self._last_loc(r))
            if slots is None:
                return None
            chosen.append(r)
            slot_parts.append(slots)
            rem_chunk -= r.extend_len
            rem_input -= r.extend_len
            rem_total -= r.extend_len
        s.policy.calc_priority(s.waiting)
        if s.adapters is not None:
            s.adapters.begin()
        max_running = s.runner.max_running_requests
        for r in list(s.waiting):
            if num_running + len(chosen) >= max_running or s.runner.req_to_token_pool.available_size() == 0:
                break
            if r.suspect and (chosen or any(h.suspect for h in s._holders())) or chosen and chosen[-1].suspect:
                break  # one suspect of a failed forward in flight at a time, prefilled alone (isolation.py)
            if rem_chunk <= 0 or rem_input <= 0:
                break
            r.match_prefix(s.tree_cache)
            prefix = len(r.prefix_indices)
            ext = len(r.all_ids) - prefix
            future = min(r.sampling_params.max_new_tokens - len(r.output_ids), CLIP_MAX_NEW_TOKENS)
            chunked = ext > rem_chunk
            if chunked:
                if s.chunked_req is not None:
                    break  # one chunked request at a time
                ext = rem_chunk // page * page
                if ext <= 0:
                    break
                need = ext
            else:
                need = ext + future + page
                if num_running == 0 and not chosen and not s.holds_kv():
                    need = ext + page  # alone: the future reserve cannot be met by waiting
            if need > rem_total or (ext > rem_input and chosen):
                break
            if s.adapters is not None and not s.adapters.reserve(r):
                continue  # its adapter waits for a device slot; the others go on
            if not self._admit(r, prefix, ext, slot_parts):
                break
            if s.adapters is not None:
                s.adapters.admitted(r)
            s.waiting.remove(r)
            chosen.append(r)
            rem_chunk -= ext
            rem_input -= ext
            rem_total -= need
            if chunked:
                s.chunked_req = r
                break
        if not chosen:
            return None
        return chosen, torch.cat(slot_parts)

    def _admit(self, r: Req, prefix: int, ext: int, slot_parts: list[torch.Tensor]) -> bool:
        """Give r a table row holding its matched prefix and slots for `ext` new tokens."""
        s = self.sched
        s.tree_cache.inc_lock_ref(r.last_node)
        pool_idx = s.runner.req_to_token_pool.alloc()
        last = r.prefix_indices[-1:] if prefix else self.no_slot
        slots = self._alloc([prefix], [ext], last) if pool_idx is not None else None
        if slots is None:
            s.tree_cache.dec_lock_ref(r.last_node)
            if pool_idx is not None:
                s.runner.req_to_token_pool.free(pool_idx)
            return False
        if prefix:
            s.runner.req_to_token_pool.req_to_token[pool_idx, :prefix] = r.prefix_indices.to(s.device, torch.int32)
        r.req_pool_idx, r.kv_len, r.extend_len, r.cache_protected_len = pool_idx, prefix, ext, prefix
        if r.cached_tokens < 0:
            r.cached_tokens = min(prefix, len(r.origin_input_ids))
            s.stats.prompt_tokens += len(r.origin_input_ids)
            s.stats.cached_tokens += r.cached_tokens
        s.start_sampling(r)
        slot_parts.append(slots)
        return True

    # ---- decode -------------------------------------------------------------------------------------
    def _decode_pages(self, batch) -> int:
        return sum(self.sched.runner.allocator.decode_page_starts(batch.seq_lens_cpu))

    def decode_fits(self, batch) -> bool:
        """Whether one more token per request fits without retracting anyone (evicting if needed)."""
        return self._free_tokens() >= self._decode_pages(batch) * self.sched.runner.page_size

    def reserve_decode(self, batch, finished: list[Req], alone: bool) -> bool:
        """Make room for one more token per running request, retracting requests if needed.

        `alone`: no other request holds KV (no prefill in this step, no chunked request). Then a
        single request that still does not fit can never fit and is aborted; otherwise it is
        retracted and comes back when memory frees up.
        """
        s = self.sched
        page = s.runner.page_size
        retracted = False
        while len(batch):
            need = self._decode_pages(batch) * page
            self._evict(need)
            if s.runner.allocator.available_size() >= need:
                break
            if len(batch) == 1 and alone:
                r = batch.reqs[0]
                r.finished_reason = FinishReason("abort", message="out of KV cache memory even for one request")
                s.releaser.release(r, frozenset())
                finished.append(r)
                batch.filter([])
                return False
            victim = min(range(len(batch)), key=lambda i: (len(batch.reqs[i].output_ids), -len(batch.reqs[i].origin_input_ids)))
            r = batch.reqs[victim]
            batch.filter([i for i in range(len(batch)) if i != victim])
            s.retract(r)
            retracted = True
        if retracted:
            reqs = batch.reqs
            gen = sum(len(r.output_ids) for r in reqs)
            total = sum(r.sampling_params.max_new_tokens for r in reqs)
            self.new_token_ratio = min(1.0, (gen + 20 * len(reqs)) / (total + 1)) if reqs else self.init_ratio
        else:
            self.new_token_ratio = max(self.min_ratio, self.new_token_ratio - self.decay)
        return len(batch) > 0
