"""The public SDK: everything a plugin (built-in or third-party) may import from jackfield."""
from jackfield.hookspecs import hookimpl
from jackfield.kernels import pdl_kwargs
from jackfield.mem.device_copy import to_device
from jackfield.sdk.attention import AttentionBackend, AttentionLayerInfo, AttentionRuntime
from jackfield.sdk import reference
from jackfield.sdk.component import (Availability, Capabilities, Component, SelectionContext, package_availability,
                                     require_cuda)
from jackfield.sdk.decoder_lm import DecoderCausalLM
from jackfield.sdk.layers.decoder import DecoderOptions
from jackfield.sdk.layers.gemv import Gemv, WeightScale
from jackfield.sdk.forward_batch import ForwardBatch, ForwardMode
from jackfield.sdk.grammar import (EosTrackingGrammar, Grammar, GrammarBackend, GrammarError, GrammarSpec, GrammarVocab, UnsupportedGrammar,
                                   allocate_bitmask, bitmask_words)
from jackfield.sdk.json_calls import JsonCallFormat, JsonCallStream, JsonToolCallParser
from jackfield.sdk.kv_cache import KVLayout, KVPool
from jackfield.sdk.lora import LoRABackend, LoRABatch, LoRARuntime, LoRAWeights, lora_batch
from jackfield.sdk.lora_graph import LoRAGraphSlots
from jackfield.sdk.lora_tiles import LoRATiles, tile_bound, tile_values
from jackfield.sdk.model import CausalLM, ModelBuildContext
from jackfield.sdk.model_config import ModelConfig, RopeConfig
from jackfield.sdk.moe import ExpertMethod, ExpertWeights, MoEConfig, MoEDispatcher, RoutingConfig, route
from jackfield.sdk.quant import (LinearMethod, PlainLinearMethod, QuantizationMethod, QuantOptions, checkpoint_names,
                                 create_plain_weights)
from jackfield.sdk.gguf import GGUF_FORMAT, GGUFWeight
from jackfield.kernels import cpu_attention as cpu_decode_attention
from jackfield.kernels.cpu_attention import unavailable as cpu_attention_unavailable
from jackfield.kernels.ggml_cpu import build as ggml_build, ggml_unavailable, mm as ggml_mm, quantize as ggml_quantize
from jackfield.sdk.reasoning_parser import ReasoningDelta, ReasoningParser, TagReasoningParser
from jackfield.sdk.spec import DraftProposal, SpeculativeDecoder, SpecInput, SpecRuntime, TargetStates
from jackfield.sdk.tool_parser import (CallDelta, ParseResult, StreamDelta, Tool, ToolCall, ToolCallParser,
                                       ToolCallStream)
from jackfield.sdk.version import API_VERSION
from jackfield.spec.draft_runner import DraftRunner


def offline_target(model: str | None = None, **settings):
    """A target model driven in-process (jackfield.spec.target_io.OfflineTarget): generate token
    ids and read its hidden states, for tools that learn from it (train-eagle)."""
    from jackfield.spec.target_io import OfflineTarget

    return OfflineTarget(model, **settings)


__all__ = [
    # every kind
    "API_VERSION", "hookimpl", "Availability", "Capabilities", "Component", "SelectionContext", "package_availability",
    "require_cuda", "pdl_kwargs", "to_device", "reference",
    # attention
    "AttentionBackend", "AttentionLayerInfo", "AttentionRuntime", "ForwardBatch", "ForwardMode", "KVLayout", "KVPool",
    "cpu_attention_unavailable", "cpu_decode_attention",
    # models
    "CausalLM", "DecoderCausalLM", "DecoderOptions", "ModelBuildContext", "ModelConfig", "RopeConfig",
    # quantization
    "Gemv", "WeightScale", "LinearMethod", "PlainLinearMethod", "QuantizationMethod", "QuantOptions", "checkpoint_names",
    "create_plain_weights",
    "GGUF_FORMAT", "GGUFWeight", "ggml_build", "ggml_mm", "ggml_quantize", "ggml_unavailable",
    # MoE
    "ExpertMethod", "ExpertWeights", "MoEConfig", "MoEDispatcher", "RoutingConfig", "route",
    # speculative decoding
    "DraftProposal", "DraftRunner", "SpeculativeDecoder", "SpecInput", "SpecRuntime", "TargetStates",
    "offline_target",
    # grammar
    "EosTrackingGrammar", "Grammar", "GrammarBackend", "GrammarError", "GrammarSpec", "GrammarVocab", "UnsupportedGrammar", "allocate_bitmask",
    "bitmask_words",
    # LoRA
    "LoRABackend", "LoRABatch", "LoRAGraphSlots", "LoRARuntime", "LoRATiles", "LoRAWeights", "lora_batch",
    "tile_bound", "tile_values",
    # tool-call and reasoning parsers
    "CallDelta", "JsonCallFormat", "JsonCallStream", "JsonToolCallParser", "ParseResult", "StreamDelta", "Tool",
    "ToolCall", "ToolCallParser", "ToolCallStream", "ReasoningDelta", "ReasoningParser", "TagReasoningParser",
]
