"""The `flashinfer` attention backend: FlashInfer's paged prefill and decode wrappers (flashinfer-python 0.7).

Per batch, `init_forward_metadata` builds FlashInfer's CSR page table once — `kv_indptr`,
`kv_indices` (page ids: every page_size-th slot of a request // page_size), `kv_last_page_len` and,
for extend, `qo_indptr` — and plans one wrapper per attention *variant* (sliding window, soft-cap,
scale); every layer of that variant reuses the plan. Variants are learned from the layers the model
runs: a variant first met in a batch is planned on the spot, and planned up front in later batches.
The pool's per-layer `[slots, kv_heads, head_dim]` buffers are FlashInfer's "NHD" layout viewed as
`[num_pages + 1, page_size, kv_heads, head_dim]`.

Speculative decoding's TARGET_VERIFY forward runs a prefill wrapper planned with a custom mask:
request i's [n_i new tokens, seq_len_i keys] boolean matrix (the whole cached prefix, within the
layer's window, then the draft tree's `fb.tree_mask`), built on the device from the batch's tensors
(`verify_mask`) and bit-packed by FlashInfer at plan time. A sliding window is folded into that mask
(the kernel would place tree nodes at causal positions, not at prefix + depth), so verify plans run
with window_left -1. The verify mode is opt-in (`opt_in_features`): `auto` does not pick this
backend for speculative decoding.

CUDA graphs cover decode and verify: one `use_cuda_graph` decode (or custom-mask prefill) wrapper
per (captured batch size, variant), all sharing static indptr/indices/last-page-length buffers
(verify adds qo_indptr, packed-mask and mask-indptr buffers), re-planned before every replay.
A decode batch with at least `SPLIT_KV_MAX_CTAS` (request, KV head) pairs per SM is planned
without split-KV: it fills the GPU as it is, and splitting only adds a merge kernel per layer.

An FP8 pool (`--kv-cache-dtype fp8_e4m3`) is planned with kv_data_type float8_e4m3fn and run with
its per-layer k_scale / v_scale.

`run` reads q in place (FlashInfer takes the token and head strides, so the q columns of the fused
qkv output need no copy) and writes into an uninitialized output (its own default zero-fills one).
Planning reads host-side lengths (`fb.seq_lens_cpu`, `fb.extend_seq_lens_cpu`); when a batch lacks
them they are copied from the device, which syncs.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from jackfield.sdk import (
    AttentionBackend, AttentionLayerInfo, AttentionRuntime, Availability, Capabilities, ForwardBatch, hookimpl,
    require_cuda, to_device,
)

WORKSPACE_BYTES = 256 << 20
SPLIT_KV_MAX_CTAS = 2  # (request, KV head) pairs per SM from which decode is planned without split-KV
Variant = tuple[int, float, float]  # (window_left, logit_cap, scale)


def variant_of(layer: AttentionLayerInfo) -> Variant:
    """FlashInfer's window_left counts the keys left of the query: a window of w keys is w - 1."""
    window_left = layer.sliding_window - 1 if layer.sliding_window is not None else -1
    return window_left, float(layer.logit_cap), float(layer.scaling)


@dataclass
class _PageTable:
    kv_indptr: torch.Tensor         # [bs + 1] int32, host
    kv_indices: torch.Tensor        # [total pages] int32, device
    kv_last_page_len: torch.Tensor  # [bs] int32, host
    qo_indptr: torch.Tensor | None  # [bs + 1] int32, host (extend and verify)


def build_page_table(fb: ForwardBatch, page_size: int, seq_lens: list[int],
                     extend_lens: list[int] | None) -> _PageTable:
    """FlashInfer's CSR page table of a batch; the page ids are gathered on the device, without a sync."""
    pages = [-(-n // page_size) for n in seq_lens]
    kv_indptr = torch.tensor([0] + pages, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    last = torch.tensor([n - (p - 1) * page_size for n, p in zip(seq_lens, pages)], dtype=torch.int32)
    total, dev = int(kv_indptr[-1]), fb.req_to_token.device
    counts = to_device(pages, torch.int64, dev)  # pinned: a pageable non_blocking copy would still wait
    req = torch.repeat_interleave(torch.arange(len(pages), device=dev), counts, output_size=total)
    page_no = torch.arange(total, device=dev) - (counts.cumsum(0) - counts)[req]
    slots = fb.req_to_token[fb.req_pool_indices[req], page_no * page_size]
    qo = None
    if extend_lens is not None:
        qo = torch.tensor([0] + extend_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return _PageTable(kv_indptr, (slots // page_size).to(torch.int32), last, qo)


def verify_mask(fb: ForwardBatch, seq_lens: list[int], extend_lens: list[int], window_left: int) -> torch.Tensor:
    """The flat custom mask of a verify batch: request by request, its [n_i, seq_len_i] rows (query
    node, key) in row-major order: a prefix key is visible within the window (window_left >= 0: keys
    at most window_left positions left of the node's position), a tree key when `fb.tree_mask` marks
    it an ancestor of the node or the node itself. Built on the device; host lengths give its size."""
    dev = fb.tree_mask.device
    sizes = [n * s for n, s in zip(extend_lens, seq_lens)]
    total = sum(sizes)
    counts = to_device(sizes, torch.int64, dev)
    req = torch.repeat_interleave(torch.arange(len(sizes), device=dev), counts, output_size=total)
    elem = torch.arange(total, device=dev) - (counts.cumsum(0) - counts)[req]
    seq, new = fb.seq_lens.long()[req], fb.extend_seq_lens.long()[req]
    row, col = elem // seq, elem % seq
    tree_col = col - (seq - new)
    in_tree = tree_col >= 0
    tree = fb.tree_mask[fb.tree_mask_indptr[req] + row * new + tree_col.clamp(min=0)]
    if window_left < 0:
        return torch.where(in_tree, tree, True)
    q_pos = fb.positions[fb.extend_start_loc.long()[req] + row]
    return torch.where(in_tree, tree, col >= q_pos - window_left)


class FlashInferAttnBackend(AttentionBackend):
    """FlashInfer batch prefill/decode over the paged KV pool, planned once per batch."""

    name = "flashinfer"
    priority = 100
    description = ("FlashInfer paged prefill and decode wrappers (plan once per batch, CUDA-graph decode and "
                   "speculative verify)")
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16"),
                                features=frozenset({"paged", "cuda_graph", "sliding_window", "logit_cap", "mixed",
                                                    "fp8_kv_cache", "spec_verify", "cuda_graph_verify"}),
                                # the verify mode is checked on the H100 against the tree reference and under
                                # CUDA-graph replay, not yet end to end (greedy equality, speed): auto keeps
                                # triton for speculative decoding (docs/configuration.md, Speculative decoding)
                                opt_in_features=frozenset({"spec_verify"}))
    requires_packages = ("flashinfer",)
    supports_cuda_graph = True
    supported_head_dims = (64, 128, 256)  # FlashInfer's prefill/decode/merge kernels are instantiated for these

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("flashinfer") is None:
            return Availability.no("Python package 'flashinfer' is not installed (pip install flashinfer-python)")
        return require_cuda()

    def __init__(self, runtime: AttentionRuntime):
        super().__init__(runtime)
        if runtime.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"flashinfer backend supports float16/bfloat16 KV caches, not {runtime.dtype}")
        import flashinfer

        self.fi = flashinfer
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=runtime.device)
        self.use_tensor_cores = runtime.num_heads // runtime.num_kv_heads >= 4
        self.sm_count = torch.cuda.get_device_properties(runtime.device).multi_processor_count
        self.variants: list[Variant] = []
        self.eager_wrappers: dict[tuple[str, Variant], object] = {}
        self.graph_wrappers: dict[tuple[str, int, Variant], object] = {}
        self.graph_buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # CUDA-graph verify: qo_indptr, packed mask, mask byte offsets
        self.verify_buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.table: _PageTable | None = None
        self.mode = "decode"  # "decode", "extend" (causal prefill) or "verify" (custom-mask prefill)
        self.verify_fb: ForwardBatch | None = None  # the verify batch being planned (its tree mask)
        self.graph_bs: int | None = None
        self.planned: dict[Variant, object] = {}
        self.plan_copied: torch.cuda.Event | None = None  # recorded after the last plan's host-to-device copies

    # ---- per-batch metadata ----------------------------------------------------------------------
    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        self._prepare(fb, graph=False)

    def _prepare(self, fb: ForwardBatch, graph: bool) -> None:
        self.mode = "decode" if fb.mode.is_decode() else "verify" if fb.mode.is_verify() else "extend"
        self.planned, self.verify_fb = {}, fb if fb.mode.is_verify() else None
        self.graph_bs = fb.batch_size if graph else None
        if fb.batch_size == 0:
            self.table = None
            return
        seq_lens = list(fb.seq_lens_cpu) if fb.seq_lens_cpu else fb.seq_lens.tolist()
        extend_lens = None
        if self.mode != "decode":
            extend_lens = list(fb.extend_seq_lens_cpu) if fb.extend_seq_lens_cpu else fb.extend_seq_lens.tolist()
        self.table = build_page_table(fb, self.runtime.page_size, seq_lens, extend_lens)
        self.lens = (seq_lens, extend_lens)
        for variant in self.variants:
            self._plan(variant)

    def _plan(self, variant: Variant):
        # plan() fills a pinned host buffer and copies it to the device asynchronously; under overlap
        # scheduling the previous batch's copy may still be queued, so wait for it before refilling.
        if self.plan_copied is not None:
            self.plan_copied.synchronize()
        wrapper = self._plan_variant(variant)
        self.plan_copied = torch.cuda.Event()
        self.plan_copied.record()
        return wrapper

    def _wrapper(self, variant: Variant):
        fi = self.fi
        if self.graph_bs is not None:
            key = (self.mode, self.graph_bs, variant)
            if key not in self.graph_wrappers:
                self.graph_wrappers[key] = self._graph_wrapper(self.graph_bs)
            return self.graph_wrappers[key]
        key = (self.mode, variant)  # verify has its own prefill wrappers: a custom mask picks another kernel
        if key not in self.eager_wrappers:
            self.eager_wrappers[key] = (
                fi.BatchDecodeWithPagedKVCacheWrapper(self.workspace, "NHD", use_tensor_cores=self.use_tensor_cores)
                if self.mode == "decode" else fi.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD"))
        return self.eager_wrappers[key]

    def _graph_wrapper(self, bs: int):
        """A `use_cuda_graph` wrapper of batch size bs over the static buffers (decode or verify)."""
        indptr, indices, last = self.graph_buffers
        if self.mode == "decode":
            return self.fi.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=self.use_tensor_cores,
                paged_kv_indptr_buffer=indptr[: bs + 1], paged_kv_indices_buffer=indices,
                paged_kv_last_page_len_buffer=last[: bs])
        qo_indptr, mask, mask_indptr = self.verify_buffers
        return self.fi.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_cuda_graph=True, qo_indptr_buf=qo_indptr[: bs + 1],
            paged_kv_indptr_buf=indptr[: bs + 1], paged_kv_indices_buf=indices, paged_kv_last_page_len_buf=last[: bs],
            custom_mask_buf=mask, mask_indptr_buf=mask_indptr[: bs + 1])

    def _plan_variant(self, variant: Variant):
        rt, t = self.runtime, self.table
        window_left, cap, scale = variant
        wrapper = self._wrapper(variant)
        common = dict(window_left=window_left, logits_soft_cap=cap if cap > 0 else None, sm_scale=scale,
                      q_data_type=rt.dtype, kv_data_type=rt.kv_pool.dtype)
        geometry = (rt.num_heads, rt.num_kv_heads, rt.head_dim, rt.page_size)
        if self.mode == "decode":
            no_split = not self.split_kv_allowed(len(t.kv_last_page_len))
            wrapper.plan(t.kv_indptr, t.kv_indices, t.kv_last_page_len, *geometry, **common,
                         **({"disable_split_kv": True} if no_split else {}))
        elif self.mode == "verify":
            mask = verify_mask(self.verify_fb, *self.lens, window_left)
            wrapper.plan(t.qo_indptr, t.kv_indptr, t.kv_indices, t.kv_last_page_len, *geometry, custom_mask=mask,
                         **{**common, "window_left": -1})
        else:
            wrapper.plan(t.qo_indptr, t.kv_indptr, t.kv_indices, t.kv_last_page_len, *geometry, causal=True, **common)
        self.planned[variant] = wrapper
        return wrapper

    def split_kv_allowed(self, batch_size: int) -> bool:
        """Whether a decode batch may be planned with split-KV. FlashInfer's option to turn it off exists
        for the tensor-core decode kernel only."""
        return not self.use_tensor_cores or batch_size * self.runtime.num_kv_heads < SPLIT_KV_MAX_CTAS * self.sm_count

    # ---- CUDA graphs -----------------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        rt, dev = self.runtime, self.runtime.device
        max_pages = max_bs * -(-rt.max_context_len // rt.page_size)
        self.graph_buffers = (torch.zeros(max_bs + 1, dtype=torch.int32, device=dev),
                              torch.zeros(max_pages, dtype=torch.int32, device=dev),
                              torch.ones(max_bs, dtype=torch.int32, device=dev))

    def init_forward_metadata_capture(self, fb: ForwardBatch) -> None:
        if self.graph_buffers is None:
            raise RuntimeError("init_cuda_graph_state must be called before capturing CUDA graphs")
        if fb.mode.is_verify():
            self._init_verify_buffers(fb)
        elif not fb.mode.is_decode():
            raise NotImplementedError("the flashinfer backend captures decode and verify batches only")
        if not self.variants:  # nothing run yet: plan the model's plain variant
            rt = self.runtime
            self.variants.append((-1, 0.0, float(rt.head_dim ** -0.5)))
        self._prepare(fb, graph=True)

    def init_forward_metadata_replay(self, fb: ForwardBatch) -> None:
        self._prepare(fb, graph=True)

    def _init_verify_buffers(self, fb: ForwardBatch) -> None:
        """Static verify buffers, sized by the first (largest) captured verify batch: qo_indptr, the
        packed mask (every request's [tokens, max_context_len] bits, each segment padded to a byte,
        plus word-alignment slack) and its byte offsets."""
        bs, tokens = fb.batch_size, fb.num_tokens // max(1, fb.batch_size)
        if self.verify_buffers is not None and self.verify_buffers[0].numel() > bs:
            return
        dev, ctx = self.runtime.device, self.runtime.max_context_len
        mask_bytes = bs * (-(-tokens * ctx // 8)) + 16
        self.verify_buffers = (torch.zeros(bs + 1, dtype=torch.int32, device=dev),
                               torch.zeros(mask_bytes, dtype=torch.uint8, device=dev),
                               torch.zeros(bs + 1, dtype=torch.int32, device=dev))

    # ---- attention -------------------------------------------------------------------------------
    def _run(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        if self.table is None:
            raise RuntimeError("flashinfer backend: init_forward_metadata was not called for this batch")
        variant = variant_of(layer)
        wrapper = self.planned.get(variant)
        if wrapper is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"attention variant {variant} first met while capturing a CUDA graph; "
                                   "run one eager forward of the model before capturing")
            if variant not in self.variants:
                self.variants.append(variant)
            wrapper = self._plan(variant)
        page = fb.kv_pool.page_size
        k = fb.kv_pool.k_buffer(layer.layer_id)
        v = fb.kv_pool.v_buffer(layer.layer_id)
        paged = (k.view(-1, page, *k.shape[1:]), v.view(-1, page, *v.shape[1:]))
        q3 = q.unflatten(-1, (layer.num_heads, layer.head_dim))  # a view: token and head strides as they are
        if q3.stride(-1) != 1:
            q3 = q3.contiguous()
        out = torch.empty(q3.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
        if fb.kv_pool.quantized:  # FP8 pool: FlashInfer multiplies by the per-layer scales
            wrapper.run(q3, paged, out=out, k_scale=fb.kv_pool.k_scales[layer.layer_id],
                        v_scale=fb.kv_pool.v_scales[layer.layer_id])
        else:
            wrapper.run(q3, paged, out=out)
        return out.view(q.shape[0], -1)

    def forward_decode(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self._run(q, layer, fb)

    def forward_extend(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        return self._run(q, layer, fb)

    def forward_verify(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        """The draft tree under the custom mask planned in init_forward_metadata (speculative decoding)."""
        return self._run(q, layer, fb)


@hookimpl
def jackfield_register_attention_backends(register):
    register(FlashInferAttnBackend)
