"""Qwen2: the Llama decoder with biases on the q/k/v projections."""
from jackfield.sdk import DecoderCausalLM, DecoderOptions, hookimpl


class Qwen2ForCausalLM(DecoderCausalLM):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    description = "Qwen2 / Qwen2.5 decoder (qkv bias)"

    @classmethod
    def decoder_options(cls, config):
        return DecoderOptions(qkv_bias=True, sliding_window=config.sliding_window)


@hookimpl
def jackfield_register_model_architectures(register):
    register(Qwen2ForCausalLM)
