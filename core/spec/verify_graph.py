"""Verify CUDA graphs: the target's TARGET_VERIFY forward captured per batch size, with exactly
`tokens_per_request` tree nodes per request (the speculative step pads every tree to that size).

Static buffers hold the batch; a live batch of n requests is copied into the first n * T token rows
and padded to the next captured size with dummy requests: request-table row 0, KV slot 0 (the
reserved page), a prefix of 0 and a tree where every node sees only itself. The attention backend
must capture extend-shaped batches from the static device tensors plus the host lengths the replay
batch carries (`seq_lens_cpu`, `extend_prefix_lens_cpu`); it declares it with the feature
"cuda_graph_verify" (Triton needs no plan; FlashInfer re-plans its custom mask before each replay). With hidden-state capture on (EAGLE), the
graph also outputs the hidden states the decoder observes.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import replace

import torch

from jackfield.cuda_graph import capture
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode

log = logging.getLogger(__name__)


def verify_capture_sizes(max_bs: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    return sorted({s for s in sizes if s <= max_bs} | {max_bs})


class VerifyGraphRunner:
    def __init__(self, runner, tokens_per_request: int, max_bs: int):
        self.runner, self.t = runner, tokens_per_request
        self.sizes = verify_capture_sizes(min(max_bs, runner.max_running_requests))
        self.max_bs = self.sizes[-1]
        dev, t, n = runner.device, tokens_per_request, self.max_bs * tokens_per_request
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=dev)
        self.req_pool_indices = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.seq_lens = torch.full((self.max_bs,), t, dtype=torch.int32, device=dev)
        self.prefix_lens = torch.zeros(self.max_bs, dtype=torch.int32, device=dev)
        self.ext_lens = torch.full((self.max_bs,), t, dtype=torch.int32, device=dev)
        self.start_loc = torch.arange(self.max_bs, dtype=torch.int32, device=dev) * t
        self.eye = torch.eye(t, dtype=torch.bool, device=dev).reshape(-1)
        self.tree_mask = self.eye.repeat(self.max_bs)
        self.tree_indptr = torch.arange(self.max_bs + 1, dtype=torch.int64, device=dev) * t * t
        self.logits_indices = torch.arange(n, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.pool = None
        self._capture_all()
        self._warm_eager()

    def _batch(self, bs: int) -> ForwardBatch:
        r, t = self.runner, self.t
        return ForwardBatch(
            mode=ForwardMode.TARGET_VERIFY, batch_size=bs, input_ids=self.input_ids[:bs * t],
            positions=self.positions[:bs * t], req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs], out_cache_loc=self.out_cache_loc[:bs * t],
            req_to_token=r.req_to_token_pool.req_to_token, kv_pool=r.kv_pool, attn_backend=r.attn_backend,
            seq_lens_cpu=(t,) * bs, extend_prefix_lens=self.prefix_lens[:bs], extend_seq_lens=self.ext_lens[:bs],
            extend_start_loc=self.start_loc[:bs], extend_prefix_lens_cpu=(0,) * bs, extend_seq_lens_cpu=(t,) * bs,
            logits_indices=self.logits_indices[:bs * t], tree_mask=self.tree_mask[:bs * t * t],
            tree_mask_indptr=self.tree_indptr[:bs + 1])

    def _run(self, fb: ForwardBatch):
        model = self.runner.model
        hidden = model(fb.input_ids, fb.positions, fb)
        spec_hidden = fb.extras.pop("aux_hidden", hidden) if self.runner.capture_hidden else None
        return model.compute_logits(hidden), spec_hidden

    @torch.inference_mode()
    def _capture_all(self) -> None:
        stream = torch.cuda.Stream()
        backend = self.runner.attn_backend
        for bs in reversed(self.sizes):
            fb = self._batch(bs)
            backend.init_forward_metadata_capture(fb)
            self.graphs[bs], self.outputs[bs], self.pool = capture(self._run, fb, self.pool, stream)
        log.info("captured verify CUDA graphs (%d tokens per request) for batch sizes %s", self.t, self.sizes)

    @torch.inference_mode()
    def _warm_eager(self) -> None:
        """One eager verify forward of a padding-only batch: batches above the captured sizes run
        eagerly, with kernel variants the captures may not have built (Triton's single-split
        verify); they compile here, not in a live step that the load policy would then judge."""
        fb = self._batch(1)
        self.runner.attn_backend.init_forward_metadata(fb)
        self._run(fb)

    def can_run(self, fb: ForwardBatch) -> bool:
        return (fb.mode.is_verify() and fb.batch_size <= self.max_bs
                and all(n == self.t for n in fb.extend_seq_lens_cpu))

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        raw, t = fb.batch_size, self.t
        bs = self.sizes[bisect.bisect_left(self.sizes, raw)]
        n = raw * t
        if bs != raw:
            self.req_pool_indices[raw:bs].zero_()
            self.seq_lens[raw:bs].fill_(t)
            self.prefix_lens[raw:bs].zero_()
            self.out_cache_loc[n:bs * t].zero_()
            self.positions[n:bs * t].zero_()
            self.input_ids[n:bs * t].zero_()
            self.tree_mask[n * t:bs * t * t].copy_(self.eye.repeat(bs - raw))
        self.input_ids[:n].copy_(fb.input_ids)
        self.positions[:n].copy_(fb.positions)
        self.out_cache_loc[:n].copy_(fb.out_cache_loc)
        self.req_pool_indices[:raw].copy_(fb.req_pool_indices)
        self.seq_lens[:raw].copy_(fb.seq_lens)
        self.prefix_lens[:raw].copy_(fb.extend_prefix_lens)
        self.tree_mask[:n * t].copy_(fb.tree_mask)
        self.runner.attn_backend.init_forward_metadata_replay(replace(
            self._batch(bs), seq_lens_cpu=tuple(fb.seq_lens_cpu) + (t,) * (bs - raw),
            extend_prefix_lens_cpu=tuple(fb.extend_prefix_lens_cpu) + (0,) * (bs - raw)))
        self.graphs[bs].replay()
        logits, hidden = self.outputs[bs]
        if hidden is not None:
            fb.extras["spec_hidden"] = hidden[:n]
        return logits[:n]
