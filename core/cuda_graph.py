"""Decode CUDA graphs: capture the model's decode forward once per batch size, replay with padding.

Static buffers hold the batch inputs; a live batch of size n is copied into the first n rows and
padded to the next captured size with dummy rows (request-table row 0, KV slot 0, seq_len from the
backend's `cuda_graph_seq_len_fill_value()`). The attention backend's capture/replay hooks fill its
own static metadata (see jackfield.sdk.attention).
"""
from __future__ import annotations

import bisect
import logging

import torch

from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode

log = logging.getLogger(__name__)


def capture_sizes(max_bs: int) -> list[int]:
    sizes = [1, 2, 4, 8, 12] + list(range(16, 257, 8)) + list(range(272, 513, 16))
    return sorted({s for s in sizes if s <= max_bs} | {max_bs})


def capture(run, fb: ForwardBatch, pool, stream: torch.cuda.Stream):
    """Two warm-up runs of `run(fb)` on `stream`, then its capture into a graph sharing `pool`;
    returns (graph, its output, the pool). The caller has set the backend's capture metadata."""
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run(fb)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        out = run(fb)
    return graph, out, graph.pool()


class CudaGraphRunner:
    def __init__(self, runner, max_bs: int, compile_model: bool = False):
        self.runner = runner
        self.sizes = capture_sizes(min(max_bs, runner.max_running_requests))
        self.max_bs = self.sizes[-1]
        dev = runner.device
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.req_pool_indices = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.fill = runner.attn_backend.cuda_graph_seq_len_fill_value()
        self.seq_lens = torch.full((self.max_bs,), self.fill, dtype=torch.int32, device=dev)
        self.out_cache_loc = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None
        self.forward_fn = runner.model.forward
        if compile_model:
            self.forward_fn = torch.compile(runner.model.forward, mode="max-autotune-no-cudagraphs", dynamic=False)
        runner.attn_backend.init_cuda_graph_state(self.max_bs, self.max_bs)
        self.lora = runner.lora  # LoRA kernels are captured over a static slot buffer (LoRAManager)
        if self.lora is not None:
            self.lora.init_cuda_graph_state(self.max_bs)
        self._capture_all()

    def _batch(self, bs: int, seq_lens_cpu: tuple[int, ...]) -> ForwardBatch:
        r = self.runner
        return ForwardBatch(mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
                            positions=self.positions[:bs], req_pool_indices=self.req_pool_indices[:bs],
                            seq_lens=self.seq_lens[:bs], out_cache_loc=self.out_cache_loc[:bs],
                            req_to_token=r.req_to_token_pool.req_to_token, kv_pool=r.kv_pool,
                            attn_backend=r.attn_backend, seq_lens_cpu=seq_lens_cpu)

    def _run(self, fb: ForwardBatch):
        """Logits, and with the runner's `capture_hidden` (a speculative decoder reading hidden
        states) (logits, those hidden states)."""
        hidden = self.forward_fn(fb.input_ids, fb.positions, fb)
        logits = self.runner.model.compute_logits(hidden)
        if self.runner.capture_hidden:
            return logits, fb.extras.pop("aux_hidden", hidden)
        return logits

    @torch.inference_mode()
    def _capture_all(self) -> None:
        stream = torch.cuda.Stream()
        for bs in reversed(self.sizes):
            fb = self._batch(bs, (self.fill,) * bs)
            self.runner.attn_backend.init_forward_metadata_capture(fb)
            if self.lora is not None:
                self.lora.prepare_capture(bs)
            self.graphs[bs], self.outputs[bs], self.pool = capture(self._run, fb, self.pool, stream)
        log.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def can_run(self, fb: ForwardBatch) -> bool:
        return fb.mode == ForwardMode.DECODE and fb.batch_size <= self.max_bs and fb.logits_indices is None

    def replay(self, fb: ForwardBatch) -> torch.Tensor:
        raw = fb.batch_size
        bs = self.sizes[bisect.bisect_left(self.sizes, raw)]
        if bs != raw:
            self.req_pool_indices[raw:bs].zero_()
            self.seq_lens[raw:bs].fill_(self.fill)
            self.out_cache_loc[raw:bs].zero_()
            self.positions[raw:bs].zero_()
            self.input_ids[raw:bs].zero_()
        self.input_ids[:raw].copy_(fb.input_ids)
        self.positions[:raw].copy_(fb.positions)
        self.req_pool_indices[:raw].copy_(fb.req_pool_indices)
        self.seq_lens[:raw].copy_(fb.seq_lens)
        self.out_cache_loc[:raw].copy_(fb.out_cache_loc)
        seq_cpu = tuple(fb.seq_lens_cpu) + (self.fill,) * (bs - raw)
        self.runner.attn_backend.init_forward_metadata_replay(self._batch(bs, seq_cpu))
        if self.lora is not None:
            self.lora.prepare_replay(fb, bs)
        self.graphs[bs].replay()
        out = self.outputs[bs]
        if isinstance(out, tuple):
            fb.extras["spec_hidden"] = out[1][:raw]
            out = out[0]
        return out[:raw]
