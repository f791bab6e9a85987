"""OfflineTarget: a target model driven in-process for tools that learn from it (train-eagle).

`generate` runs token-id requests through a real Scheduler (continuous batching, the same sampler);
`hidden_states` runs whole sequences as extend forwards and returns every position's final hidden
state (after the model's last norm: the feature EAGLE-1/2 heads read) and, for chosen layers, the
inputs of those layers (EAGLE-3's features).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from jackfield.io_struct import TokenizedGenerateReq
from jackfield.mem.device_copy import to_device
from jackfield.sampling.params import SamplingParams
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode


class OfflineTarget:
    def __init__(self, model: str | None = None, **settings):
        from jackfield.config import settings_for
        from jackfield.engine_loop import build_scheduler

        settings.setdefault("disable_radix_cache", True)
        self.scheduler, self.info = build_scheduler(settings_for(model=model, **settings), progress=False)
        self.runner = self.scheduler.runner
        self.tokenizer = self.scheduler.tokenizer
        self.model_config = self.runner.config
        self.model, self.device, self.dtype = self.runner.model, self.runner.device, self.runner.dtype

    def generate(self, prompts: list[list[int]], params: list[SamplingParams],
                 on_finish: Callable[[], None] | None = None) -> list[list[int]]:
        """Each prompt's generated tokens (every request submitted at once); `on_finish` is called
        as each request finishes (a progress bar)."""
        s = self.scheduler
        outs: dict[str, list[int]] = {f"g{i}": [] for i in range(len(prompts))}

        def take(batches) -> None:
            for batch in batches:
                for o in batch.outputs:
                    outs[o.rid] += o.new_token_ids
                    if o.finished is not None and on_finish is not None:
                        on_finish()

        for i, (ids, p) in enumerate(zip(prompts, params)):
            take(s.handle(TokenizedGenerateReq(f"g{i}", list(ids), p)))
        while s.has_work():
            take(s.step())
        return [outs[f"g{i}"] for i in range(len(prompts))]

    @torch.inference_mode()
    def hidden_states(self, seqs: list[list[int]], layers: tuple[int, ...] = (),
                      max_tokens: int = 8192) -> list[torch.Tensor]:
        """Per sequence [len, H] final hidden states, or with `layers` [len, len(layers) * H]: the
        concatenated inputs of those layers. Sequences are batched up to `max_tokens` per forward,
        and up to what the KV pool and the request table hold (pages rounded up per sequence)."""
        r = self.runner
        max_seqs = r.req_to_token_pool.available_size()
        max_tokens = min(max_tokens, r.allocator.available_size() - (r.page_size - 1) * max_seqs)
        r.capture_hidden, r.model.model.capture_layers = True, tuple(layers)
        out: list[torch.Tensor] = []
        try:
            batch: list[list[int]] = []
            for seq in seqs + [None]:
                if seq is None or (batch and (sum(map(len, batch)) + len(seq) > max_tokens or len(batch) == max_seqs)):
                    if batch:
                        out += self._forward(batch)
                    batch = []
                if seq is not None:
                    batch.append(seq)
        finally:
            r.capture_hidden, r.model.model.capture_layers = False, ()
        return out

    def _forward(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        r, dev = self.runner, self.device
        lens = [len(s) for s in seqs]
        rows = [r.req_to_token_pool.alloc() for _ in seqs]
        slots = r.allocator.alloc(sum(lens)) if r.page_size == 1 else r.allocator.alloc_extend(
            [0] * len(seqs), lens, [-1] * len(seqs))
        if slots is None or None in rows:
            raise RuntimeError("the KV pool cannot hold one batch of sequences; lower max_tokens")
        table, off = r.req_to_token_pool.req_to_token, 0
        for row, n in zip(rows, lens):
            table[row, :n] = slots[off:off + n].to(torch.int32)
            off += n
        ext = to_device(lens, torch.int32, dev)
        start = torch.zeros_like(ext)
        start[1:] = torch.cumsum(ext, 0)[:-1]
        fb = ForwardBatch(
            mode=ForwardMode.EXTEND, batch_size=len(seqs), input_ids=to_device([t for s in seqs for t in s], torch.int64, dev),
            positions=to_device([p for n in lens for p in range(n)], torch.int64, dev),
            req_pool_indices=to_device(rows, torch.int64, dev), seq_lens=ext.clone(), out_cache_loc=slots,
            req_to_token=table, kv_pool=r.kv_pool, attn_backend=r.attn_backend, seq_lens_cpu=tuple(lens),
            extend_prefix_lens=torch.zeros_like(ext), extend_seq_lens=ext, extend_start_loc=start,
            extend_prefix_lens_cpu=(0,) * len(seqs), extend_seq_lens_cpu=tuple(lens),
            logits_indices=start.long())
        try:
            r.forward(fb)
            hidden = fb.extras["spec_hidden"]
        finally:
            for row, n in zip(rows, lens):
                r.allocator.free(table[row, :n].to(torch.int64))
                r.req_to_token_pool.free(row)
        return list(hidden.split(lens))

    def close(self) -> None:
        self.scheduler.close()
