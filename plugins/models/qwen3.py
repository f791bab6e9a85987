"""Qwen3: the Llama decoder with per-head RMSNorm on q and k before rotary."""
from jackfield.sdk import DecoderCausalLM, DecoderOptions, hookimpl


class Qwen3ForCausalLM(DecoderCausalLM):
    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    description = "Qwen3 dense decoder (q/k norm)"

    @classmethod
    def decoder_options(cls, config):
        return DecoderOptions(qkv_bias=config.attention_bias, qk_norm=True, sliding_window=config.sliding_window)


@hookimpl
def jackfield_register_model_architectures(register):
    register(Qwen3ForCausalLM)
