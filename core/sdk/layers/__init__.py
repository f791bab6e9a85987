"""Shared model layers for architecture plugins (Llama-family building blocks, MoE and MLA)."""
from jackfield.sdk.layers.activation import silu_and_mul
from jackfield.sdk.layers.attention import SelfAttention
from jackfield.sdk.layers.decoder import DecoderLayer, DecoderModel, DecoderOptions
from jackfield.sdk.layers.embedding import LMHead, VocabEmbedding
from jackfield.sdk.layers.linear import Linear
from jackfield.sdk.layers.mla import MLAAttention
from jackfield.sdk.layers.mlp import GatedMLP
from jackfield.sdk.layers.moe import FusedExperts, PlainLinear, SparseMoE, expert_config
from jackfield.sdk.layers.norm import RMSNorm
from jackfield.sdk.layers.rotary import RotaryEmbedding

__all__ = ["silu_and_mul", "SelfAttention", "DecoderLayer", "DecoderModel", "DecoderOptions", "LMHead",
           "VocabEmbedding", "Linear", "GatedMLP", "RMSNorm", "RotaryEmbedding",
           "SparseMoE", "FusedExperts", "PlainLinear", "expert_config", "MLAAttention"]
