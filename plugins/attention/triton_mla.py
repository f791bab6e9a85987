"""The `triton_mla` attention backend: MLA over the latent KV pool (weight absorption), in Triton.

Decode attends every absorbed head over each request's latents (kv_lora_rank + qk_rope_head_dim per
token), split-KV with a merge, and runs in the decode CUDA graphs; extends over a cached prefix (and
mixed batches) use the same kernel with a block of new tokens per program. Extends with no cached
prefix take the expanded form (`forward_ragged`): causal MHA of the new tokens with K and V the
model expanded from the latents. Kernels: triton_mla_kernels.py. The per-batch metadata, split
counts and CUDA-graph scratch buffers are the `triton` backend's.
"""
from __future__ import annotations

from jackfield.sdk import AttentionLayerInfo, Capabilities, ForwardBatch, hookimpl
from jackfield_plugins.attention.triton import TritonAttnBackend, _DecodeMeta, _ExtendMeta, cdiv


class TritonMLABackend(TritonAttnBackend):
    name = "triton_mla"
    priority = 50
    description = "Triton MLA: split-KV latent decode, latent extend, expanded ragged prefill"
    capabilities = Capabilities(devices=("cuda",), dtypes=("float16", "bfloat16", "float32"),
                                features=frozenset({"paged", "cuda_graph", "mixed", "ragged_prefill"}))
    no_verify_reason = "draft-tree verify over the latent (MLA) KV layout is not implemented"
    kv_layout_kind = "latent"
    supports_ragged_prefill = True

    def __init__(self, runtime):
        from jackfield_plugins.attention import triton_mla_kernels

        self.mla = triton_mla_kernels  # before the base's __init__, which sizes the semaphores by programs_per_request
        super().__init__(runtime)

    def programs_per_request(self) -> int:
        return cdiv(self.runtime.num_heads, self.mla.decode_block_h(self.runtime.num_heads))

    def _meta(self, kind: type, caller: str):
        if not isinstance(self.meta, kind):
            raise RuntimeError(f"{caller} called without its metadata (init_forward_metadata first)")
        return self.meta

    def forward_decode(self, q, layer: AttentionLayerInfo, fb: ForwardBatch):
        meta = self._meta(_DecodeMeta, "forward_decode")
        q3 = q.view(-1, layer.num_heads, layer.head_dim)
        out = q.new_empty(q3.shape[0], layer.num_heads, layer.v_dim)
        self.mla.mla_decode(q3, fb.kv_pool.k_buffer(layer.layer_id), out, fb.req_to_token, fb.req_pool_indices,
                            fb.seq_lens, meta.mid_o, meta.mid_lse, meta.num_splits, layer.scaling,
                            semaphores=self.semaphores)
        return out.view(q3.shape[0], -1)

    def forward_extend(self, q, layer: AttentionLayerInfo, fb: ForwardBatch):
        meta = self._meta(_ExtendMeta, "forward_extend")
        q3 = q.view(-1, layer.num_heads, layer.head_dim)
        out = q.new_empty(q3.shape[0], layer.num_heads, layer.v_dim)
        self.mla.mla_extend(q3, fb.kv_pool.k_buffer(layer.layer_id), out, fb.req_to_token, fb.req_pool_indices,
                            fb.seq_lens, fb.extend_start_loc, fb.extend_seq_lens, meta.max_extend_len, layer.scaling)
        return out.view(q3.shape[0], -1)

    def forward_ragged(self, q, k, v, layer: AttentionLayerInfo, fb: ForwardBatch):
        meta = self._meta(_ExtendMeta, "forward_ragged")
        h = layer.num_heads
        q3, k3, v3 = q.view(-1, h, layer.head_dim), k.view(-1, h, layer.head_dim), v.view(-1, h, layer.v_dim)
        out = q.new_empty(q3.shape[0], h, layer.v_dim)
        self.mla.ragged_prefill(q3, k3, v3, out, fb.extend_start_loc, fb.extend_seq_lens, meta.max_extend_len,
                                layer.scaling)
        return out.view(q3.shape[0], -1)


@hookimpl
def jackfield_register_attention_backends(register):
    register(TritonMLABackend)
