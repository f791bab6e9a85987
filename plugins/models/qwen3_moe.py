"""Qwen3-MoE: the Qwen3 decoder (q/k norm) with sparse MoE blocks (softmax top-k, renormalized when
norm_topk_prob), dense MLPs on the layers mlp_only_layers and decoder_sparse_step leave out."""
from jackfield.sdk import DecoderCausalLM, DecoderOptions, RoutingConfig, hookimpl
from jackfield.sdk.layers import SparseMoE, expert_config


class Qwen3MoeForCausalLM(DecoderCausalLM):
    name = "qwen3_moe"
    architectures = ("Qwen3MoeForCausalLM",)
    description = "Qwen3-MoE decoder (q/k norm, routed experts)"

    @classmethod
    def tiny_config(cls):
        """4 of 8 experts: with the shrunk default (2 of 4), the kit's fixed random weights give some
        tokens two near-equal expert scores, and its bfloat16 check then compares two routings."""
        return {**super().tiny_config(), "num_experts": 8, "num_experts_per_tok": 4}

    @classmethod
    def decoder_options(cls, config):
        return DecoderOptions(qkv_bias=config.attention_bias, qk_norm=True, sliding_window=config.sliding_window)

    def layer_parts(self, config, ctx, layer_id, prefix, rotary):
        moe = config.moe
        if not moe.is_sparse(layer_id):
            return None, None
        routing = RoutingConfig(top_k=moe.top_k, renormalize=bool(moe.norm_topk_prob))
        return None, SparseMoE(expert_config(config, routing), ctx, f"{prefix}.mlp")


@hookimpl
def jackfield_register_model_architectures(register):
    register(Qwen3MoeForCausalLM)
