"""The `triton` attention backend: split-KV flash-decoding, one-launch variable-length extend, and
split-KV verify for speculative draft trees.

The kernels read K/V straight from the token-slot KV pool through `req_to_token`, so any page size
works and no per-batch index list is built: per-batch metadata is only the number of KV splits for
decode and verify (and their scratch buffers) and a grid bound for extend, all derived without a
device sync. Decode merges its KV splits inside the split kernel (the last split of each request
and kv head to finish, counted on the backend's int32 semaphores, which every launch leaves at
zero), so it is one launch per layer.
An FP8 pool is read as such: K and V are converted in registers and their per-layer scales folded
into the logit scale and the output. Triton itself is imported when the backend is constructed,
never at discovery.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jackfield.sdk import (
    AttentionBackend, AttentionLayerInfo, AttentionRuntime, Availability, Capabilities, ForwardBatch, hookimpl,
    require_cuda,
)

MAX_SPLITS = 32         # upper bound of KV splits per (request, kv head) in decode
MIN_SPLIT_TOKENS = 128  # no split is made shorter than this many keys (eager mode)
PROGRAMS_PER_SM = 4     # decode aims at about this many stage-1 programs per SM


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class _DecodeMeta:
    num_splits: int
    mid_o: torch.Tensor    # [bs, num_heads, num_splits, head_dim] float32
    mid_lse: torch.Tensor  # [bs, num_heads, num_splits] float32


@dataclass
class _ExtendMeta:
    max_extend_len: int    # grid bound: any upper bound of the batch's extend lengths


@dataclass
class _VerifyMeta(_ExtendMeta):  # extend-shaped: a sliding-window layer runs the extend kernel with the tree
    num_splits: int
    mid_o: torch.Tensor    # [num_tokens, num_heads, num_splits, head_dim] float32
    mid_lse: torch.Tensor  # [num_tokens, num_heads, num_splits] float32


class TritonAttnBackend(AttentionBackend):
    """Triton kernels for paged attention: GQA-grouped split-KV decode and verify, and causal extend."""

    name = "triton"
    priority = 50
    description = "Triton split-KV decode and variable-length extend over the paged KV pool"
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16", "float32"),
                                features=frozenset({"paged", "cuda_graph", "sliding_window", "logit_cap", "mixed",
                                                    "fp8_kv_cache", "spec_verify", "cuda_graph_verify"}))
    requires_packages = ("triton",)
    supports_cuda_graph = True

    @classmethod
    def availability(cls) -> Availability:
        found = super().availability()
        return found if not found.ok else require_cuda()

    def __init__(self, runtime: AttentionRuntime):
        super().__init__(runtime)
        if runtime.num_heads % runtime.num_kv_heads:
            raise ValueError(f"num_heads ({runtime.num_heads}) must be a multiple of num_kv_heads "
                             f"({runtime.num_kv_heads})")
        from jackfield_plugins.attention import triton_kernels

        self.kernels = triton_kernels
        self.value_dim = runtime.kv_pool.layout.v_dim  # width of the values (and of decode's partial outputs)
        device = torch.device(runtime.device)
        self.num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
        self.meta: _DecodeMeta | _ExtendMeta | None = None
        self.graph_mid_o: torch.Tensor | None = None
        self.graph_mid_lse: torch.Tensor | None = None
        self.graph_verify_scratch: list[tuple[torch.Tensor, torch.Tensor]] = []
        # The decode kernel's split semaphores (zero between launches): its last split merges the rest.
        self.semaphores = self._semaphores(runtime.max_batch_size)

    def _semaphores(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(max(1, batch_size) * self.programs_per_request(), dtype=torch.int32,
                           device=self.runtime.device)

    # ---- per-batch metadata ----------------------------------------------------------------------
    def programs_per_request(self) -> int:
        """Decode programs per request and split (one per KV head: its query heads share them)."""
        return self.runtime.num_kv_heads

    def num_splits(self, batch_size: int, max_seq_len: int) -> int:
        """KV splits for decode: enough programs to fill the GPU, none shorter than MIN_SPLIT_TOKENS."""
        by_occupancy = cdiv(PROGRAMS_PER_SM * self.num_sms, max(1, batch_size * self.programs_per_request()))
        by_length = cdiv(max(1, max_seq_len), MIN_SPLIT_TOKENS)
        return max(1, min(MAX_SPLITS, by_occupancy, by_length))

    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        rt, bs = self.runtime, fb.batch_size
        if fb.mode.is_decode():
            max_len = max(fb.seq_lens_cpu) if fb.seq_lens_cpu else rt.max_context_len
            splits = self.num_splits(bs, max_len)
            mid_o = torch.empty(bs, rt.num_heads, splits, self.value_dim, dtype=torch.float32, device=rt.device)
            mid_lse = torch.empty(bs, rt.num_heads, splits, dtype=torch.float32, device=rt.device)
            self.meta = _DecodeMeta(splits, mid_o, mid_lse)
        elif fb.mode.is_verify():
            max_len = max(fb.seq_lens_cpu) if fb.seq_lens_cpu else rt.max_context_len
            splits = self.num_splits(bs, max_len)
            rows = fb.num_tokens if splits > 1 else 0
            self.meta = _VerifyMeta(max(fb.extend_seq_lens_cpu), splits,
                                    torch.empty(rows, rt.num_heads, splits, self.value_dim, dtype=torch.float32,
                                                device=rt.device),
                                    torch.empty(rows, rt.num_heads, splits, dtype=torch.float32, device=rt.device))
        else:
            lens = fb.extend_seq_lens_cpu
            self.meta = _ExtendMeta(max(lens) if lens else fb.num_tokens)

    # ---- CUDA graphs -----------------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        """One flat scratch buffer big enough for the largest bs × splits any captured size uses."""
        rt = self.runtime
        if self.semaphores.numel() < max_bs * self.programs_per_request():
            self.semaphores = self._semaphores(max_bs)
        rows = max(b * self.num_splits(b, rt.max_context_len) for b in range(1, max_bs + 1))
        self.graph_mid_o = torch.empty(rows * rt.num_heads * self.value_dim, dtype=torch.float32, device=rt.device)
        self.graph_mid_lse = torch.empty(rows * rt.num_heads, dtype=torch.float32, device=rt.device)

    def init_forward_metadata_capture(self, fb: ForwardBatch) -> None:
        self._graph_metadata(fb)

    def init_forward_metadata_replay(self, fb: ForwardBatch) -> None:
        self._graph_metadata(fb)

    def _graph_metadata(self, fb: ForwardBatch) -> None:
        """Metadata that depends on the captured shape alone, views of the static scratch buffers."""
        if self.graph_mid_o is None:
            raise RuntimeError("init_cuda_graph_state must be called before capturing CUDA graphs")
        rt, bs = self.runtime, fb.batch_size
        if fb.mode.is_verify():
            self.meta = self._graph_verify_meta(fb)
            return
        if not fb.mode.is_decode():
            lens = fb.extend_seq_lens_cpu
            self.meta = _ExtendMeta(max(lens) if lens else fb.num_tokens)
            return
        splits = self.num_splits(bs, rt.max_context_len)
        n = bs * rt.num_heads * splits
        mid_o = self.graph_mid_o[: n * self.value_dim].view(bs, rt.num_heads, splits, self.value_dim)
        self.meta = _DecodeMeta(splits, mid_o, self.graph_mid_lse[:n].view(bs, rt.num_heads, splits))

    def _graph_verify_meta(self, fb: ForwardBatch) -> _VerifyMeta:
        """A captured verify batch: splits for the longest context (empty ones cost little), scratch
        from a static buffer. A larger size than the last one gets a new buffer; the old ones stay
        alive, since graphs captured before read them."""
        rt = self.runtime
        splits = self.num_splits(fb.batch_size, rt.max_context_len)
        rows = fb.num_tokens * rt.num_heads * splits
        if not self.graph_verify_scratch or self.graph_verify_scratch[-1][1].numel() < rows:
            self.graph_verify_scratch.append((
                torch.empty(rows * self.value_dim, dtype=torch.float32, device=rt.device),
                torch.empty(rows, dtype=torch.float32, device=rt.device)))
        mid_o, mid_lse = self.graph_verify_scratch[-1]
        shape = (fb.num_tokens, rt.num_heads, splits)
        return _VerifyMeta(max(fb.extend_seq_lens_cpu), splits, mid_o[:rows * self.value_dim].view(*shape, -1),
                           mid_lse[:rows].view(shape))

    # ---- attention -------------------------------------------------------------------------------
    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        meta = self.meta
        if not isinstance(meta, _DecodeMeta):
            raise RuntimeError("forward_decode called without decode metadata (init_forward_metadata first)")
        q3 = q.reshape(-1, layer.num_heads, layer.head_dim)
        out = torch.empty(q3.shape, dtype=q3.dtype, device=q3.device)
        semaphores = self.semaphores if self.semaphores.numel() >= q3.shape[0] * self.programs_per_request() else None
        self.kernels.decode_attention(
            q3, fb.kv_pool.k_buffer(layer.layer_id), fb.kv_pool.v_buffer(layer.layer_id), out,
            fb.req_to_token, fb.req_pool_indices, fb.seq_lens, meta.mid_o, meta.mid_lse, meta.num_splits,
            layer.scaling, layer.logit_cap, layer.sliding_window, k_scale=fb.kv_pool.k_scales[layer.layer_id],
            v_scale=fb.kv_pool.v_scales[layer.layer_id], semaphores=semaphores)
        return out.view(q.shape[0], -1)

    def forward_verify(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        """Draft trees (speculative decoding): the split-KV verify kernel; with a sliding window, the
        extend kernel with the tree's mask."""
        meta = self.meta
        if not isinstance(meta, _VerifyMeta):
            raise RuntimeError("forward_verify called without verify metadata (init_forward_metadata first)")
        if layer.sliding_window is not None:
            return self.forward_extend(q, layer, fb, tree=(fb.tree_mask, fb.tree_mask_indptr, fb.positions))
        q3 = q.reshape(-1, layer.num_heads, layer.head_dim)
        out = torch.empty(q3.shape, dtype=q3.dtype, device=q3.device)
        self.kernels.verify_attention(
            q3, fb.kv_pool.k_buffer(layer.layer_id), fb.kv_pool.v_buffer(layer.layer_id), out,
            fb.req_to_token, fb.req_pool_indices, fb.seq_lens, fb.extend_start_loc, fb.extend_seq_lens,
            meta.max_extend_len, fb.tree_mask, fb.tree_mask_indptr, meta.mid_o, meta.mid_lse, meta.num_splits,
            layer.scaling, layer.logit_cap, k_scale=fb.kv_pool.k_scales[layer.layer_id],
            v_scale=fb.kv_pool.v_scales[layer.layer_id])
        return out.view(q.shape[0], -1)

    def forward_extend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch,
                       tree: tuple | None = None) -> torch.Tensor:
        meta = self.meta
        if not isinstance(meta, _ExtendMeta):
            raise RuntimeError("forward_extend called without extend metadata (init_forward_metadata first)")
        q3 = q.reshape(-1, layer.num_heads, layer.head_dim)
        out = torch.empty(q3.shape, dtype=q3.dtype, device=q3.device)
        self.kernels.extend_attention(
            q3, fb.kv_pool.k_buffer(layer.layer_id), fb.kv_pool.v_buffer(layer.layer_id), out,
            fb.req_to_token, fb.req_pool_indices, fb.seq_lens, fb.extend_start_loc, fb.extend_seq_lens,
            meta.max_extend_len, layer.scaling, layer.logit_cap, layer.sliding_window,
            k_scale=fb.kv_pool.k_scales[layer.layer_id], v_scale=fb.kv_pool.v_scales[layer.layer_id], tree=tree)
        return out.view(q.shape[0], -1)


@hookimpl
def jackfield_register_attention_backends(register):
    register(TritonAttnBackend)
