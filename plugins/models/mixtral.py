"""Mixtral: the Mistral decoder with a sparse MoE block (softmax top-k, renormalized) in every layer.
Its checkpoints call the block `block_sparse_moe` and an expert's projections w1 (gate), w3 (up)
and w2 (down)."""
from jackfield.sdk import DecoderCausalLM, RoutingConfig, hookimpl
from jackfield.sdk.layers import SparseMoE, expert_config


class MixtralForCausalLM(DecoderCausalLM):
    name = "mixtral"
    architectures = ("MixtralForCausalLM",)
    description = "Mixtral sparse MoE decoder"
    checkpoint_renames = ((".block_sparse_moe.", ".mlp."),)
    expert_params = (("w1", "w13", 0), ("w3", "w13", 1), ("w2", "w2", 2))

    def layer_parts(self, config, ctx, layer_id, prefix, rotary):
        routing = RoutingConfig(top_k=config.moe.top_k, renormalize=True)
        return None, SparseMoE(expert_config(config, routing), ctx, f"{prefix}.mlp")


@hookimpl
def jackfield_register_model_architectures(register):
    register(MixtralForCausalLM)
