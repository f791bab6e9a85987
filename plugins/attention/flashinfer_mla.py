"""The `flashinfer_mla` attention backend: FlashInfer's MLA paged wrapper over the latent KV pool
(flashinfer-python 0.7: `flashinfer.mla.BatchMLAPagedAttentionWrapper`, planner backend "auto").

Per batch the CSR page table (`build_page_table` of the `flashinfer` backend) is built once and the
MLA wrapper planned once for every layer (decode: one query per request; extend and mixed: causal
queries of each request's new tokens over its latents). Queries [tokens, heads, kv_lora + rope]
and the pool's latents viewed as [pages, page_size, kv_lora + rope] are passed packed. An extend
with no cached prefix also plans the ragged prefill wrapper (`BatchPrefillWithRaggedKVCacheWrapper`,
qk width != v width) for the expanded form. The softmax scale is a layer's (DeepSeek's YaRN mscale
is in it): it is learned from the first layer call, which for CUDA graphs is the warm-up run before
capture; later batches plan up front. Decode CUDA graphs use one `use_cuda_graph` wrapper per batch
size over static index buffers, re-planned before every replay.
"""
from __future__ import annotations

import importlib.util

import torch

from jackfield.sdk import (AttentionBackend, AttentionLayerInfo, Availability, Capabilities, ForwardBatch, hookimpl,
                           require_cuda)
from jackfield_plugins.attention.flashinfer import WORKSPACE_BYTES, build_page_table


class FlashInferMLABackend(AttentionBackend):
    name = "flashinfer_mla"
    priority = 40  # below triton_mla
    description = "FlashInfer MLA paged wrapper (absorbed latent attention) and ragged prefill"
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16"),
                                features=frozenset({"paged", "cuda_graph", "mixed", "ragged_prefill"}))
    no_verify_reason = "draft-tree verify over the latent (MLA) KV layout is not implemented"
    requires_packages = ("flashinfer",)
    kv_layout_kind = "latent"
    supports_ragged_prefill = True
    supports_cuda_graph = True

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("flashinfer") is None:
            return Availability.no("Python package 'flashinfer' is not installed (pip install flashinfer-python)")
        return require_cuda((8, 0))

    def __init__(self, runtime):
        super().__init__(runtime)
        import flashinfer
        from flashinfer import mla

        self.fi, self.fi_mla = flashinfer, mla
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=runtime.device)
        self.v_dim = runtime.kv_pool.layout.v_dim
        self.scale: float | None = None
        self.eager = mla.BatchMLAPagedAttentionWrapper(self.workspace)
        self.ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(self.workspace, "NHD")
        self.graph_wrappers: dict[int, object] = {}
        self.graph_buffers: tuple[torch.Tensor, ...] | None = None
        self.batch: tuple | None = None  # (wrapper, qo_indptr, kv_indptr, kv_indices, kv_lens, causal, extend lens)
        self.planned = self.ragged_planned = False
        self.plan_copied: torch.cuda.Event | None = None  # after the last plan's host-to-device copies

    # ---- per-batch metadata ----------------------------------------------------------------------
    def init_forward_metadata(self, fb: ForwardBatch) -> None:
        self._prepare(fb, self.eager)

    def _prepare(self, fb: ForwardBatch, wrapper) -> None:
        self.planned = self.ragged_planned = False
        if fb.batch_size == 0:
            self.batch = None
            return
        seq = list(fb.seq_lens_cpu) if fb.seq_lens_cpu else fb.seq_lens.tolist()
        decode = fb.mode.is_decode()
        ext = None
        if not decode:
            ext = list(fb.extend_seq_lens_cpu) if fb.extend_seq_lens_cpu else fb.extend_seq_lens.tolist()
        table = build_page_table(fb, self.runtime.page_size, seq, ext)
        qo = torch.arange(fb.batch_size + 1, dtype=torch.int32) if decode else table.qo_indptr
        lens = torch.tensor(seq, dtype=torch.int32)
        prefixes = fb.extend_prefix_lens_cpu
        self.batch = (wrapper, qo, table.kv_indptr, table.kv_indices, lens, not decode,
                      ext if ext is not None and prefixes and not any(prefixes) else None)
        if self.scale is not None:
            self._plan()

    def _plan(self) -> None:
        # plan() fills pinned host buffers and copies them asynchronously; under overlap scheduling the
        # previous batch's copy may still be queued (as in the flashinfer backend)
        if self.plan_copied is not None:
            self.plan_copied.synchronize()
        rt = self.runtime
        wrapper, qo, kv_indptr, kv_indices, lens, causal, _ = self.batch
        wrapper.plan(metadata=self.fi_mla.MLAPlanMetadata.csr(qo, kv_indptr, kv_indices, lens),
                     num_heads=rt.num_heads, head_dim_ckv=self.v_dim, head_dim_kpe=rt.head_dim - self.v_dim,
                     page_size=rt.page_size, causal=causal, sm_scale=self.scale, q_data_type=rt.dtype,
                     kv_data_type=rt.dtype, query_layout="packed", kv_cache_layout="packed")
        self.planned = True
        self.plan_copied = torch.cuda.Event()
        self.plan_copied.record()

    def _plan_ragged(self, layer: AttentionLayerInfo) -> None:
        qo = self.batch[1]
        self.ragged.plan(qo, qo, layer.num_heads, layer.num_heads, layer.head_dim, head_dim_vo=layer.v_dim,
                         causal=True, sm_scale=layer.scaling, q_data_type=self.runtime.dtype)
        self.ragged_planned = True

    # ---- CUDA graphs -----------------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        rt, dev = self.runtime, self.runtime.device
        max_pages = max_bs * -(-rt.max_context_len // rt.page_size)
        self.graph_buffers = (torch.zeros(max_bs + 1, dtype=torch.int32, device=dev),
                              torch.zeros(max_bs + 1, dtype=torch.int32, device=dev),
                              torch.zeros(max_pages, dtype=torch.int32, device=dev),
                              torch.ones(max_bs, dtype=torch.int32, device=dev))

    def _graph_wrapper(self, bs: int):
        if bs not in self.graph_wrappers:
            qo, kv_indptr, kv_indices, lens = self.graph_buffers
            self.graph_wrappers[bs] = self.fi_mla.BatchMLAPagedAttentionWrapper(
                self.workspace, use_cuda_graph=True, qo_indptr=qo[:bs + 1], kv_indptr=kv_indptr[:bs + 1],
                kv_indices=kv_indices, kv_len_arr=lens[:bs])
        return self.graph_wrappers[bs]

    def init_forward_metadata_capture(self, fb: ForwardBatch) -> None:
        if self.graph_buffers is None:
            raise RuntimeError("init_cuda_graph_state must be called before capturing CUDA graphs")
        if not fb.mode.is_decode():
            raise NotImplementedError("the flashinfer_mla backend captures decode batches only")
        self._prepare(fb, self._graph_wrapper(fb.batch_size))

    def init_forward_metadata_replay(self, fb: ForwardBatch) -> None:
        self._prepare(fb, self._graph_wrapper(fb.batch_size))

    # ---- attention -------------------------------------------------------------------------------
    def _run(self, q: torch.Tensor, layer: AttentionLayerInfo, fb: ForwardBatch) -> torch.Tensor:
        if self.batch is None:
            raise RuntimeError("flashinfer_mla: init_forward_metadata was not called for this batch")
        if not self.planned:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("flashinfer_mla: the softmax scale is learned from an eager forward; run one "
                                   "before capturing CUDA graphs")
            self.scale = layer.scaling
            self._plan()
        q3 = q.view(-1, layer.num_heads, layer.head_dim)
        kv = fb.kv_pool.k_buffer(layer.layer_id)
        out = q.new_empty(q3.shape[0], layer.num_heads, layer.v_dim)
        self.batch[0].run(query=q3, kv_cache=kv.view(-1, self.runtime.page_size, kv.shape[-1]), out=out)
        return out.view(q3.shape[0], -1)

    def forward_decode(self, q, layer, fb):
        return self._run(q, layer, fb)

    def forward_extend(self, q, layer, fb):
        return self._run(q, layer, fb)

    def forward_ragged(self, q, k, v, layer, fb):
        if self.batch is None or self.batch[6] is None:
            raise RuntimeError("flashinfer_mla: forward_ragged needs an extend batch with no cached prefix")
        if not self.ragged_planned:
            self._plan_ragged(layer)
        h = layer.num_heads
        out = q.new_empty(q.shape[0], h, layer.v_dim)
        self.ragged.run(q.view(-1, h, layer.head_dim), k.view(-1, h, layer.head_dim), v.view(-1, h, layer.v_dim),
                        out=out)
        return out.view(q.shape[0], -1)


@hookimpl
def jackfield_register_attention_backends(register):
    register(FlashInferMLABackend)
