"""Llama (Llama-2, Llama-3/3.1 with llama3 rope scaling, SmolLM2)."""
from jackfield.sdk import DecoderCausalLM, hookimpl


class LlamaForCausalLM(DecoderCausalLM):
    name = "llama"
    architectures = ("LlamaForCausalLM",)
    description = "Llama-family decoder (Llama 2/3/3.1, SmolLM2)"


@hookimpl
def jackfield_register_model_architectures(register):
    register(LlamaForCausalLM)
