"""Tiny Hugging Face configs: any architecture transformers knows, shrunk to a few kilobytes.

The conformance kit runs every model architecture on such a config (random weights, CPU, float32)
and compares its logits with transformers'. `tiny_hf_config` takes transformers' own config class
for the architecture, so the defaults of every field the kit does not know stay as transformers
sets them, and overrides only the size fields below that the class has. An architecture with
fields that do not fit these values (a group count that must divide the expert count, say)
overrides `CausalLM.tiny_config` and adjusts the dict this returns.
"""
from __future__ import annotations

from typing import Any

# field -> tiny value; applied only where the config class has the field and its default is not None
TINY_SIZES: dict[str, Any] = {
    # dense decoder
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
    "sliding_window": 8,
    # mixture of experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    # multi-head latent attention
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
}
# token ids of the defaults may exceed the tiny vocabulary: the kit feeds token ids directly
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def transformers_model_class(architecture: str) -> type | None:
    """transformers' model class of that name (e.g. LlamaForCausalLM), or None."""
    import transformers

    try:
        return getattr(transformers, architecture, None)
    except Exception:  # a lazily imported class whose module fails to import
        return None


def tiny_hf_config(architecture: str) -> dict | None:
    """A config.json-style dict for `architecture` with every size shrunk, or None when
    transformers does not know the architecture."""
    model_cls = transformers_model_class(architecture)
    config_cls = getattr(model_cls, "config_class", None)
    if config_cls is None:
        return None
    defaults = config_cls().to_dict()
    overrides = {k: v for k, v in TINY_SIZES.items() if defaults.get(k) is not None}
    overrides.update({k: None for k in TOKEN_IDS if k in defaults})
    config = config_cls(**overrides).to_dict()
    config["architectures"] = [architecture]
    return config
