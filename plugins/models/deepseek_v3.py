"""DeepSeek-V3 / R1: the DeepSeek-V2 architecture with sigmoid routing scores, a per-expert correction
bias that steers the choice (not the weights), group scores from each group's two best experts,
renormalized weights times routed_scaling_factor."""
from jackfield.sdk import RoutingConfig, hookimpl
from jackfield_plugins.models.deepseek_v2 import DeepseekV2ForCausalLM


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    name = "deepseek_v3"
    architectures = ("DeepseekV3ForCausalLM",)
    description = "DeepSeek-V3 decoder (MLA, sigmoid routing with correction bias, shared experts)"

    @classmethod
    def routing(cls, config) -> RoutingConfig:
        moe = config.moe
        return RoutingConfig(top_k=moe.top_k, scoring="sigmoid",
                             renormalize=True if moe.norm_topk_prob is None else moe.norm_topk_prob,
                             num_groups=moe.num_groups, topk_groups=moe.topk_groups, group_scoring="top2_sum",
                             correction_bias=True, scaling_factor=moe.routed_scaling_factor)


@hookimpl
def jackfield_register_model_architectures(register):
    register(DeepseekV3ForCausalLM)
