"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): the Qwen2 decoder (qkv bias) with sparse MoE blocks whose
shared expert is added behind a sigmoid gate."""
from jackfield.sdk import DecoderCausalLM, DecoderOptions, RoutingConfig, hookimpl
from jackfield.sdk.layers import SparseMoE, expert_config


class Qwen2MoeForCausalLM(DecoderCausalLM):
    name = "qwen2_moe"
    architectures = ("Qwen2MoeForCausalLM",)
    description = "Qwen2-MoE decoder (qkv bias, routed experts, gated shared expert)"

    @classmethod
    def decoder_options(cls, config):
        return DecoderOptions(qkv_bias=True, sliding_window=config.sliding_window)

    def layer_parts(self, config, ctx, layer_id, prefix, rotary):
        moe = config.moe
        if not moe.is_sparse(layer_id):
            return None, None
        routing = RoutingConfig(top_k=moe.top_k, renormalize=bool(moe.norm_topk_prob))
        return None, SparseMoE(expert_config(config, routing), ctx, f"{prefix}.mlp", moe.shared_intermediate_size,
                               shared_name="shared_expert", shared_gate=True)


@hookimpl
def jackfield_register_model_architectures(register):
    register(Qwen2MoeForCausalLM)
