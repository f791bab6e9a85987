"""Multi-head latent attention (DeepSeek-V2/V3), with the KV cache holding one latent per token.

Per token the pool stores c = [RMSNorm(kv_a) (kv_lora_rank) | rotated k_pe (qk_rope_head_dim)]
(a "latent" KVLayout). kv_b_proj expands c's first part into per-head k_nope [H, nope] and v
[H, v_dim]. Two equivalent ways to attend:

* absorbed (decode, and extends over a cached prefix): q_nope is multiplied into the latent space
  by w_kc (kv_b_proj's k rows), so each head's query is [q_lat (kv_lora) | q_pe (rope)] and
  attends to c directly, as MQA with one shared KV head whose values are c's first kv_lora
  columns; w_vc (kv_b_proj's v rows) maps the output back to v_dim per head. Reads one 576-wide
  vector per token for all heads: the memory-bound win.
* expanded (extends with no cached prefix, where the backend `supports_ragged_prefill`): K and V
  of the new tokens are expanded with kv_b_proj and attend as ordinary causal MHA
  (`forward_ragged`), cheaper in FLOPs for long prefills; the latents are still stored.

DeepSeek's rotary pairs are interleaved ((x0, x1), (x2, x3), …). q·k is unchanged by a permutation
applied to both sides, so once loaded, the rope rows of q's projection and of kv_a's k_pe are
reordered to the half-split layout and the SDK's NeoX-style RotaryEmbedding (fused kernel on CUDA)
rotates them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from jackfield.kernels import fused_available
from jackfield.sdk.attention import AttentionLayerInfo
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.layers.norm import RMSNorm
from jackfield.sdk.layers.rotary import RotaryEmbedding
from jackfield.sdk.model import ModelBuildContext
from jackfield.sdk.model_config import ModelConfig

LATENT_NORM_EPS = 1e-6  # DeepSeek's q_a / kv_a norms use the RMSNorm default, not rms_norm_eps


def mla_softmax_scale(config: ModelConfig) -> float:
    """qk_head_dim^-0.5, times YaRN's mscale(factor, mscale_all_dim)^2 when the rope is scaled."""
    scale = config.mla.qk_head_dim ** -0.5
    rope = config.rope
    if rope.scaling_type is not None and rope.mscale_all_dim and rope.factor > 1:
        m = 0.1 * rope.mscale_all_dim * math.log(rope.factor) + 1.0
        scale *= m * m
    return scale


def deinterleave_rows(weight: torch.Tensor, start: int, width: int, period: int) -> None:
    """In place: within every `period` rows, reorder rows [start, start + width) from interleaved
    pairs (0, 1, 2, 3, …) to evens then odds (0, 2, …, 1, 3, …)."""
    order = torch.cat([torch.arange(0, width, 2), torch.arange(1, width, 2)]).to(weight.device)
    rows = weight.view(-1, period, *weight.shape[1:])
    with torch.no_grad():
        rows[:, start:start + width] = rows[:, start:start + width][:, order]


class MLAAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, ctx: ModelBuildContext, prefix: str,
                 rotary: RotaryEmbedding):
        super().__init__()
        m, heads = config.mla, config.num_heads
        self.mla, self.num_heads = m, heads
        self.q_out = m.q_lora_rank or heads * m.qk_head_dim
        self.kv_a_out = m.kv_lora_rank + m.qk_rope_head_dim
        # q_a_proj (or q_proj) and kv_a_proj_with_mqa read the same input: one GEMM
        self.fused_qkv_a_proj = Linear(config.hidden_size, (self.q_out, self.kv_a_out), ctx,
                                       f"{prefix}.fused_qkv_a_proj", bias=config.attention_bias, shard_ids=(0, 1))
        if m.q_lora_rank:
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, LATENT_NORM_EPS, ctx.dtype, ctx.device)
            self.q_b_proj = Linear(m.q_lora_rank, (heads * m.qk_head_dim,), ctx, f"{prefix}.q_b_proj")
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, LATENT_NORM_EPS, ctx.dtype, ctx.device)
        self.kv_b_proj = Linear(m.kv_lora_rank, (heads * (m.qk_nope_head_dim + m.v_head_dim),), ctx,
                                f"{prefix}.kv_b_proj")
        self.o_proj = Linear(heads * m.v_head_dim, (config.hidden_size,), ctx, f"{prefix}.o_proj",
                             bias=config.attention_bias)
        self.rotary, self.dtype = rotary, ctx.dtype
        scale = mla_softmax_scale(config)
        self.info = AttentionLayerInfo(layer_id=layer_id, num_heads=heads, num_kv_heads=1, head_dim=self.kv_a_out,
                                       scaling=scale, v_head_dim=m.kv_lora_rank)
        self.expanded_info = AttentionLayerInfo(layer_id=layer_id, num_heads=heads, num_kv_heads=heads,
                                                head_dim=m.qk_head_dim, scaling=scale, v_head_dim=m.v_head_dim)
        self.w_kc: torch.Tensor | None = None  # [H, nope, kv_lora]
        self.w_vc: torch.Tensor | None = None  # [H, kv_lora, v]

    def process_weights_after_loading(self) -> None:
        """Runs before the projections' own post-processing (parents come first in modules())."""
        m = self.mla
        if m.rope_interleave:
            q_proj = self.q_b_proj if m.q_lora_rank else self.fused_qkv_a_proj
            q_rows = q_proj.weight[: self.num_heads * m.qk_head_dim]
            deinterleave_rows(q_rows, m.qk_nope_head_dim, m.qk_rope_head_dim, m.qk_head_dim)
            kv_rows = self.fused_qkv_a_proj.weight[self.q_out:]
            deinterleave_rows(kv_rows, m.kv_lora_rank, m.qk_rope_head_dim, self.kv_a_out)
            bias = self.fused_qkv_a_proj.bias
            if bias is not None:
                deinterleave_rows(bias[self.q_out:], m.kv_lora_rank, m.qk_rope_head_dim, self.kv_a_out)
        weight = self.kv_b_proj.weight
        if weight.dtype != self.dtype or weight.dim() != 2:
            raise ValueError(f"MLA weight absorption needs kv_b_proj's weight as a plain {self.dtype} matrix; the "
                             f"quantization method stores it as {weight.dtype} {tuple(weight.shape)} (leave kv_b_proj "
                             "unquantized, or dequantize it in process_weights_after_loading)")
        kv_b = weight.view(self.num_heads, m.qk_nope_head_dim + m.v_head_dim, m.kv_lora_rank)
        self.w_kc = kv_b[:, :m.qk_nope_head_dim]                  # views: no second copy of kv_b_proj
        self.w_vc = kv_b[:, m.qk_nope_head_dim:].transpose(1, 2)

    def forward_normed(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                       norm: nn.Module, fb: ForwardBatch):
        """Attention on norm(hidden + residual); returns (output, hidden + residual)."""
        qkv_a, residual = self.fused_qkv_a_proj.forward_normed(hidden, residual, norm)
        return self._attend(positions, qkv_a, fb), residual

    def _attend(self, positions: torch.Tensor, qkv_a: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        m, heads, t = self.mla, self.num_heads, qkv_a.shape[0]
        q, kv_a = qkv_a.split([self.q_out, self.kv_a_out], dim=-1)
        if m.q_lora_rank:
            q = self.q_b_proj(self.q_a_layernorm(q.contiguous()))
        q_nope, q_pe = q.view(t, heads, m.qk_head_dim).split([m.qk_nope_head_dim, m.qk_rope_head_dim], dim=-1)
        backend = fb.attn_backend
        q_full = torch.empty(t, heads, self.kv_a_out, dtype=q.dtype, device=q.device)  # [q_lat | q_pe] per head
        latent = torch.empty(t, self.kv_a_out, dtype=qkv_a.dtype, device=qkv_a.device)
        stored = self._prepare(positions, kv_a, q_pe, q_full, latent, fb, store=backend.kv_stored_by_pool)
        q_pe = q_full[..., m.kv_lora_rank:]
        if (backend.supports_ragged_prefill and fb.mode == ForwardMode.EXTEND and fb.extend_prefix_lens_cpu
                and not any(fb.extend_prefix_lens_cpu)):
            return self._attend_expanded(q_nope, q_pe, latent, fb, stored)
        q_full[..., :m.kv_lora_rank] = torch.bmm(q_nope.transpose(0, 1), self.w_kc).transpose(0, 1)
        out = backend.forward(q_full.view(t, -1), latent, None, self.info, fb, save_kv=not stored)
        v = torch.bmm(out.view(t, heads, m.kv_lora_rank).transpose(0, 1), self.w_vc)  # [H, T, v]
        return self.o_proj(v.transpose(0, 1).reshape(t, heads * m.v_head_dim))

    def _prepare(self, positions, kv_a, q_pe, q_full, latent, fb: ForwardBatch, store: bool) -> bool:
        """latent = [norm(c_kv) | rope(k_pe)], q_full[..., kv_lora:] = rope(q_pe); on CUDA in one
        kernel that also stores the latent in the pool (when `store`). Returns whether it stored."""
        m = self.mla
        if fused_available(kv_a) and self.rotary.rotary_dim == m.qk_rope_head_dim:
            from jackfield.kernels.mla_prepare import mla_prepare

            cache = fb.kv_pool.k_buffer(self.info.layer_id) if store else None
            mla_prepare(positions, kv_a, self.kv_a_layernorm.weight, self.kv_a_layernorm.eps, q_pe,
                        self.rotary.cos_sin_cache, q_full, latent, fb.out_cache_loc,
                        None if cache is None else cache.view(cache.shape[0], -1))
            return store
        t, heads = kv_a.shape[0], self.num_heads
        latent[:, :m.kv_lora_rank] = self.kv_a_layernorm(kv_a[:, :m.kv_lora_rank].contiguous())
        k_pe = latent[:, m.kv_lora_rank:]
        k_pe.copy_(kv_a[:, m.kv_lora_rank:])
        rot_q, rot_k = self.rotary(positions, q_pe.reshape(t, heads * m.qk_rope_head_dim), k_pe)
        if rot_k.data_ptr() != k_pe.data_ptr():  # the torch path returns new tensors
            k_pe.copy_(rot_k)
        q_full[..., m.kv_lora_rank:] = rot_q.view(t, heads, m.qk_rope_head_dim)
        return False

    def _attend_expanded(self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor,
                         fb: ForwardBatch, stored: bool) -> torch.Tensor:
        m, heads, t = self.mla, self.num_heads, latent.shape[0]
        if not stored:
            fb.kv_pool.set_kv(self.info.layer_id, fb.out_cache_loc, latent, None)
        kv = self.kv_b_proj(latent[:, :m.kv_lora_rank]).view(t, heads, m.qk_nope_head_dim + m.v_head_dim)
        k_nope, v = kv.split([m.qk_nope_head_dim, m.v_head_dim], dim=-1)
        k = torch.empty(t, heads, m.qk_head_dim, dtype=latent.dtype, device=latent.device)
        k[..., :m.qk_nope_head_dim] = k_nope
        k[..., m.qk_nope_head_dim:] = latent[:, None, m.kv_lora_rank:]
        q = torch.cat([q_nope, q_pe], dim=-1)
        out = fb.attn_backend.forward_ragged(q.view(t, -1), k.view(t, -1), v.reshape(t, -1), self.expanded_info, fb)
        return self.o_proj(out)
