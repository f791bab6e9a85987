"""EAGLE draft heads in the published checkpoint layouts, for inference and for training.

EAGLE-1/2 (`LlamaForCausalLMEagle`): the pair (token x_{j+1}, target feature f_j) at position j goes
through `fc` ([2H -> H], with bias) on cat(embed(x_{j+1}), f_j), then Llama decoder layers (layer 0
without its input norm) and no final norm; logits come from the target's LM head. The output
approximates f_{j+1}: it is the feature the next draft position reads. Checkpoint names: `fc.*`,
`layers.N.*` (q/k/v/o, gate/up/down, norms), optionally `embed_tokens.weight` and `lm_head.weight`
(else the target's are shared). f is the target's final hidden state, after its norm.

EAGLE-3 (`LlamaForCausalLMEagle3`): f is the concatenated inputs of three target layers (low, mid,
high; `fc` maps [3 * target hidden -> H]); one `midlayer` whose attention reads
cat(input_layernorm(embed), hidden_norm(h)) ([2H] in); a final `norm` before its own `lm_head`
over a draft vocabulary of `draft_vocab_size` tokens, mapped to target ids by `d2t` (target id =
draft id + d2t[draft id]). The next position reads the midlayer's output before the final norm.

Attention goes through the attention backend when a ForwardBatch is given (the DraftRunner), and
through dense causal attention for training (`fb` None).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jackfield.sdk import AttentionLayerInfo, ForwardBatch, ModelConfig
from jackfield.sdk.layers.rotary import rope_inv_freq

EAGLE_ARCHS = {"LlamaForCausalLMEagle": 1, "LlamaForCausalLMEagle3": 3}


class _Rope(nn.Module):
    def __init__(self, config: ModelConfig, max_pos: int):
        super().__init__()
        inv, scale = rope_inv_freq(config.rope, max_pos)
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)
        self.register_buffer("cos", freqs.cos() * scale, persistent=False)
        self.register_buffer("sin", freqs.sin() * scale, persistent=False)
        self.rotary_dim = config.rope.rotary_dim

    def forward(self, positions: torch.Tensor, x: torch.Tensor, head_dim: int) -> torch.Tensor:
        """x [..., heads * D] rotated (NeoX layout) at `positions` [...], out of place."""
        shape = x.shape
        x = x.view(*shape[:-1], -1, head_dim)
        rot, rest = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        a, b = rot.chunk(2, dim=-1)
        cos = self.cos[positions].unsqueeze(-2).to(x.dtype)
        sin = self.sin[positions].unsqueeze(-2).to(x.dtype)
        return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1).reshape(shape)


class _Layer(nn.Module):
    def __init__(self, c: ModelConfig, layer_id: int, in_size: int, input_norm: bool):
        super().__init__()
        h, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.q_proj, self.k_proj = nn.Linear(in_size, q, bias=False), nn.Linear(in_size, kv, bias=False)
        self.v_proj, self.o_proj = nn.Linear(in_size, kv, bias=False), nn.Linear(q, h, bias=False)
        self.gate_proj = nn.Linear(h, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, h, bias=False)
        self.input_layernorm = nn.Parameter(torch.ones(h)) if input_norm else None
        self.post_attention_layernorm = nn.Parameter(torch.ones(h))
        self.info = AttentionLayerInfo(layer_id, c.num_heads, c.num_kv_heads, c.head_dim, c.head_dim ** -0.5)
        self.eps = c.rms_norm_eps

    def attend(self, x: torch.Tensor, positions: torch.Tensor, rope: _Rope, fb: ForwardBatch | None) -> torch.Tensor:
        i = self.info
        q = rope(positions, self.q_proj(x), i.head_dim)
        k = rope(positions, self.k_proj(x), i.head_dim)
        v = self.v_proj(x)
        if fb is not None:
            return self.o_proj(fb.attn_backend.forward(q, k, v, i, fb))
        # training: causal sequences [B, T, *] (or one, [T, *]), right-padded
        lead = x.shape[:-1]
        b, t = (1, lead[0]) if len(lead) == 1 else lead
        qh = q.reshape(b, t, i.num_heads, i.head_dim).transpose(1, 2)
        kh = k.reshape(b, t, i.num_kv_heads, i.head_dim).transpose(1, 2)
        vh = v.reshape(b, t, i.num_kv_heads, i.head_dim).transpose(1, 2)
        rep = i.num_heads // i.num_kv_heads
        o = F.scaled_dot_product_attention(qh, kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1),
                                           is_causal=True, scale=i.scaling)
        return self.o_proj(o.transpose(1, 2).reshape(*lead, -1))

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, weight.shape, weight.to(x.dtype), self.eps)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EagleHead(nn.Module):
    """An EAGLE-1/2 or EAGLE-3 head; `version` is 1 or 3."""

    def __init__(self, config: ModelConfig, hf: dict, target_hidden: int, max_pos: int):
        super().__init__()
        self.config, self.hf, self.version = config, hf, EAGLE_ARCHS[config.architectures[0]]
        h = config.hidden_size
        self.fc = nn.Linear((3 if self.version == 3 else 2) * (target_hidden if self.version == 3 else h), h,
                            bias=self.version == 1 or bool(hf.get("bias", False)))
        self.rope = _Rope(config, max_pos)
        if self.version == 1:
            self.layers = nn.ModuleList(_Layer(config, i, h, input_norm=i > 0) for i in range(config.num_layers))
        else:
            self.midlayer = _Layer(config, 0, 2 * h, input_norm=True)
            self.hidden_norm = nn.Parameter(torch.ones(h))
            self.norm = nn.Parameter(torch.ones(h))
            self.draft_vocab = hf.get("draft_vocab_size") or config.vocab_size
        self.share(None, None)
        self.register_buffer("d2t", torch.zeros(0, dtype=torch.int64), persistent=False)

    def share(self, embed: nn.Module | None, lm_head: nn.Module | None) -> None:
        """The embedding and LM head (the target's, or the checkpoint's own). Kept outside the
        head's parameters: training never updates them."""
        self.__dict__["embed"], self.__dict__["lm_head"] = embed, lm_head

    # ---- forward ----------------------------------------------------------------------------------
    def features(self, ids: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor,
                 fb: ForwardBatch | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden for the logits, hidden the next draft position reads) of every row."""
        emb = self.embed(ids).to(self.fc.weight.dtype)
        hidden = hidden.to(self.fc.weight.dtype)
        if self.version == 1:
            x = self.fc(torch.cat([emb, hidden], dim=-1))
            for layer in self.layers:
                inp = x if layer.input_layernorm is None else layer.norm(x, layer.input_layernorm)
                x = x + layer.attend(inp, positions, self.rope, fb)
                x = x + layer.mlp(layer.norm(x, layer.post_attention_layernorm))
            return x, x
        h = self.fc(hidden) if hidden.shape[-1] != self.config.hidden_size else hidden
        m = self.midlayer
        x = torch.cat([m.norm(emb, m.input_layernorm), m.norm(h, self.hidden_norm)], dim=-1)
        x = h + m.attend(x, positions, self.rope, fb)
        x = x + m.mlp(m.norm(x, m.post_attention_layernorm))
        return m.norm(x, self.norm), x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the target's vocabulary (EAGLE-3: draft-vocabulary logits placed at their
        target ids, -inf elsewhere)."""
        out = self.lm_head(hidden.to(self._head_dtype())).float()
        if self.version == 1 or self.d2t.numel() == 0:
            return out
        full = torch.full((out.shape[0], self.target_vocab), float("-inf"), device=out.device)
        full[:, torch.arange(self.draft_vocab, device=out.device) + self.d2t] = out
        return full

    def _head_dtype(self) -> torch.dtype:
        """What the LM head takes: its weight's dtype, or the model dtype for a head with a
        quantization method (LMHead.method: its weight may be codes)."""
        if getattr(self.lm_head, "method", None) is not None:
            return self.fc.weight.dtype
        return next(self.lm_head.parameters()).dtype

    # the DraftRunner's model interface
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        for_logits, nxt = self.features(input_ids, positions, fb.extras["spec_hidden_in"], fb)
        fb.extras["spec_hidden_out"] = nxt
        return for_logits

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.logits(hidden)
