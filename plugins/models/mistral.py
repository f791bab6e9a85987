"""Mistral: the Llama decoder with sliding-window attention."""
from jackfield.sdk import DecoderCausalLM, hookimpl


class MistralForCausalLM(DecoderCausalLM):
    name = "mistral"
    architectures = ("MistralForCausalLM",)
    description = "Mistral decoder (sliding-window attention when configured)"


@hookimpl
def jackfield_register_model_architectures(register):
    register(MistralForCausalLM)
