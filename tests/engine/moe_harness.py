"""Tiny random MoE and MLA checkpoints (transformers, float32) for the CPU tests and the GPU tests.

`MOE_SPECS` holds one configuration per architecture: Mixtral, Qwen3-MoE (a dense layer among the
expert layers), Qwen2-MoE (gated shared expert), DeepSeek-V2 (MLA without q_lora_rank, a first dense
layer, group-limited greedy routing, YaRN rope with mscale) and DeepSeek-V3 (q_lora_rank, sigmoid
routing with a random correction bias, top-2-sum groups, routed scaling 2.5). Every parameter and
the correction-bias buffers are random, so a weight landing in the wrong place shows.
"""
from __future__ import annotations

from pathlib import Path

import torch

from model_harness import ArchSpec, build_hf_model

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}
MLA = {"num_key_value_heads": 4, "head_dim": 8, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
       "v_head_dim": 16, "moe_intermediate_size": 32, "first_k_dense_replace": 1, "tie_word_embeddings": False}
MOE_SPECS = [
    ArchSpec("mixtral", "MixtralConfig", {"num_local_experts": 8, "num_experts_per_tok": 2,
                                          "tie_word_embeddings": False}, seed=21),
    ArchSpec("qwen3_moe", "Qwen3MoeConfig", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                             "norm_topk_prob": True, "mlp_only_layers": [1],
                                             "tie_word_embeddings": False}, seed=22),
    ArchSpec("qwen2_moe", "Qwen2MoeConfig", {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                             "shared_expert_intermediate_size": 48, "tie_word_embeddings": False},
             seed=23),
    ArchSpec("deepseek_v2", "DeepseekV2Config", {**MLA, "n_routed_experts": 8, "num_experts_per_tok": 2,
                                                 "n_shared_experts": 2, "q_lora_rank": None,
                                                 "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
                                                 "rope_parameters": {**YARN, "mscale": 0.707, "mscale_all_dim": 0.707}},
             seed=24),
    ArchSpec("deepseek_v3", "DeepseekV3Config", {**MLA, "n_routed_experts": 16, "num_experts_per_tok": 4,
                                                 "n_shared_experts": 1, "q_lora_rank": 24, "n_group": 4,
                                                 "topk_group": 2, "routed_scaling_factor": 2.5,
                                                 "rope_parameters": {**YARN, "mscale": 1.0, "mscale_all_dim": 0.8}},
             seed=25),
]
MOE = {s.name: s for s in MOE_SPECS}


def save_tiny_moe(spec: ArchSpec, directory: Path):
    """Save the spec's random model (correction biases randomized too) as safetensors; returns it."""
    model = build_hf_model(spec)
    gen = torch.Generator().manual_seed(spec.seed + 100)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
    model.save_pretrained(str(directory), safe_serialization=True)
    return model
