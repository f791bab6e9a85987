"""DeepSeek-V2 (and V2-Lite): multi-head latent attention, softmax-routed experts (greedy or
group-limited top-k) plus shared experts, dense MLPs in the first first_k_dense_replace layers, YaRN
rope. The KV cache holds one latent per token and layer. Checkpoint layers past num_hidden_layers
(DeepSeek-V3's multi-token-prediction layer 61) are skipped."""
import re

import torch

from jackfield.sdk import DecoderCausalLM, KVLayout, RoutingConfig, hookimpl
from jackfield.sdk.layers import MLAAttention, SparseMoE, expert_config


class DeepseekV2ForCausalLM(DecoderCausalLM):
    name = "deepseek_v2"
    architectures = ("DeepseekV2ForCausalLM",)
    description = "DeepSeek-V2 decoder (MLA, routed + shared experts)"
    stacked_params = (
        ("q_a_proj", "fused_qkv_a_proj", 0), ("q_proj", "fused_qkv_a_proj", 0),
        ("kv_a_proj_with_mqa", "fused_qkv_a_proj", 1),
        ("gate_proj", "gate_up_proj", 0), ("up_proj", "gate_up_proj", 1),
    )

    @classmethod
    def tiny_config(cls):
        """The kit's tiny config, with what MLA needs on top of the shrunk sizes: transformers' rope
        width is head_dim (= qk_rope_head_dim), every head has its own K/V, a top-k."""
        config = super().tiny_config()
        return {**config, "head_dim": config["qk_rope_head_dim"], "num_key_value_heads": config["num_attention_heads"],
                "num_experts_per_tok": config.get("num_experts_per_tok") or 2}

    @classmethod
    def kv_layout(cls, config):
        m = config.mla
        return KVLayout.latent(m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank)

    @classmethod
    def routing(cls, config) -> RoutingConfig:
        moe = config.moe
        grouped = moe.topk_method == "group_limited_greedy"
        return RoutingConfig(top_k=moe.top_k, scoring="softmax", renormalize=bool(moe.norm_topk_prob),
                             num_groups=moe.num_groups if grouped else 1, topk_groups=moe.topk_groups if grouped else 1,
                             scaling_factor=moe.routed_scaling_factor)

    def load_weights(self, weights):
        n = self.config.num_layers
        super().load_weights((name, tensor) for name, tensor in weights if not _past_last_layer(name, n))

    def layer_parts(self, config, ctx, layer_id, prefix, rotary):
        attn = MLAAttention(config, layer_id, ctx, f"{prefix}.self_attn", rotary)
        moe = config.moe
        if not moe.is_sparse(layer_id):
            return attn, None
        return attn, SparseMoE(expert_config(config, self.routing(config)), ctx, f"{prefix}.mlp",
                               moe.shared_intermediate_size, shared_name="shared_experts", router_dtype=torch.float32)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def _past_last_layer(name: str, num_layers: int) -> bool:
    found = _LAYER.match(name)
    return found is not None and int(found.group(1)) >= num_layers


@hookimpl
def jackfield_register_model_architectures(register):
    register(DeepseekV2ForCausalLM)
