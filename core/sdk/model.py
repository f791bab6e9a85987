"""Model architectures: the base class every architecture plugin subclasses.

A CausalLM is an nn.Module built from the SDK's layers (jackfield.sdk.layers). The model runner
calls `forward(input_ids, positions, fb)` to get hidden states for every token of the batch and
`compute_logits(hidden)` on the rows that need logits. Weights arrive as (name, tensor) pairs in
Hugging Face naming; `stacked_params` declares which checkpoint tensors are fused into one
parameter (q/k/v -> qkv_proj, gate/up -> gate_up_proj), the way nano-vllm's
`packed_modules_mapping` does, and `expert_params` how one expert's tensors
(`….experts.<e>.<proj>.<suffix>`) land in the layer's stacked expert parameters
(`….experts.w13_<suffix>` / `w2_<suffix>`, see jackfield.sdk.moe.ExpertMethod.load); transformers'
in-memory layout, every expert in one tensor (`….experts.gate_up_proj` [E, 2I, H],
`….experts.down_proj` [E, H, I]), loads whole.
`checkpoint_renames` rewrites checkpoint names first (Mixtral's `block_sparse_moe` is our `mlp`).
The model also declares its KV layout (`kv_layout`) and what its attention backend and MoE
dispatcher must support (`required_features`, `moe_features`); selection matches them.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import re

import torch
from torch import nn

from jackfield.sdk.component import Component
from jackfield.sdk.forward_batch import ForwardBatch
from jackfield.sdk.kv_cache import KVLayout, kv_scale_target
from jackfield.sdk.model_config import ModelConfig
from jackfield.sdk.parallel import SINGLE, ParallelGroup
from jackfield.sdk.quant import QuantizationMethod


@dataclass(frozen=True)
class ModelBuildContext:
    quant: QuantizationMethod
    dtype: torch.dtype
    device: torch.device
    moe: Any = None   # MoEDispatcher, for architectures with expert layers
    lora: Any = None  # when LoRA is on: the core's LoRA manager, whose `wrap(prefix, in_features, shards)`
                      # gives each SDK Linear its LoRALayer (or None); None: no layer pays anything
    tp: ParallelGroup = SINGLE  # tensor parallelism: this rank's place (jackfield.sdk.parallel); the SDK layers
                                # split themselves by it, so a model built from them declares nothing more
    ep: ParallelGroup = SINGLE  # expert parallelism: the ranks the routed experts of every MoE layer are spread over


class CausalLM(nn.Module, Component):
    kind: ClassVar[str] = "model"
    architectures: ClassVar[tuple[str, ...]] = ()
    # checkpoint suffix -> (fused parameter suffix, shard id)
    stacked_params: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("q_proj", "qkv_proj", "q"), ("k_proj", "qkv_proj", "k"), ("v_proj", "qkv_proj", "v"),
        ("gate_proj", "gate_up_proj", 0), ("up_proj", "gate_up_proj", 1),
    )
    ignored_weights: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)
    # checkpoint projection name of one expert -> (stacked parameter prefix, shard: 0 gate, 1 up, 2 down)
    expert_params: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("gate_proj", "w13", 0), ("up_proj", "w13", 1), ("down_proj", "w2", 2),
    )
    checkpoint_renames: ClassVar[tuple[tuple[str, str], ...]] = ()  # (old substring, new) applied first

    def __init__(self, config: ModelConfig, ctx: ModelBuildContext):
        nn.Module.__init__(self)
        self.config, self.ctx = config, ctx

    @classmethod
    def tiny_config(cls) -> dict[str, Any] | None:
        """A tiny config of this architecture (a config.json-style dict) for the conformance kit.

        The kit builds the model on it with random weights. When transformers knows the dict's
        `model_type`, the kit also builds transformers' model from it, loads those weights into both
        and compares logits. Default: transformers' config class for the first of `architectures`
        it knows, with every size shrunk (`jackfield.sdk.tiny_config.tiny_hf_config`); None when it
        knows none of them. Override it for an architecture transformers does not have (return a
        dict whose `model_type` names the transformers model yours must match, if any) or whose
        extra fields need other tiny values (call super() and adjust the dict)."""
        from jackfield.sdk.tiny_config import tiny_hf_config

        for arch in cls.architectures:
            config = tiny_hf_config(arch)
            if config is not None:
                return config
        return None

    @classmethod
    def required_features(cls, config: ModelConfig) -> frozenset[str]:
        """Attention features this model needs from the backend (e.g. sliding_window)."""
        return frozenset({"sliding_window"}) if config.sliding_window else frozenset()

    @classmethod
    def kv_layout(cls, config: ModelConfig) -> KVLayout:
        """What the KV pool stores per token and layer for this model (per-head K and V by default)."""
        return KVLayout.per_head(config.num_kv_heads, config.head_dim)

    @classmethod
    def moe_features(cls, config: ModelConfig) -> frozenset[str] | None:
        """What this model's expert layers need from the MoE dispatcher (their activation); None for
        a model without expert layers."""
        return frozenset({config.hidden_act}) if config.num_experts else None

    def _checkpoint_target(self, name: str) -> tuple[str, object]:
        """(parameter name, shard id) a checkpoint tensor loads into."""
        for old, new in self.checkpoint_renames:
            name = name.replace(old, new)
        stacked = _STACKED_EXPERTS.match(name)  # transformers' in-memory layout: every expert in one tensor
        if stacked:
            head, proj, suffix = stacked.groups()
            return f"{head}.experts.{'w13' if proj == 'gate_up_proj' else 'w2'}_{suffix or 'weight'}", (None, None)
        expert = _EXPERT.match(name)
        if expert:
            head, index, proj, suffix = expert.groups()
            for ckpt, stacked, shard in self.expert_params:
                if proj == ckpt:
                    return f"{head}.experts.{stacked}_{suffix}", (int(index), shard)
        for ckpt, fused, shard_id in self.stacked_params:
            if f".{ckpt}." in name:
                return name.replace(f".{ckpt}.", f".{fused}."), shard_id
        return name, None

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        ...

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; every parameter must be covered, else ValueError names the gaps.
        KV-cache scales (`...self_attn.k_scale` and the other names `kv_scale_target` knows) go to
        their attention layer's `set_kv_scale`. A tied LM head with its own quantization method
        (`LMHead.method`) whose tensors the checkpoint lacks gets the embedding's tensor as its `weight`."""
        modules = dict(self.named_modules())
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        head = modules.get("lm_head")
        head_source, head_tensor = None, None  # the embedding a quantized tied head may have to read
        if self.config.tie_word_embeddings and getattr(head, "method", None) is not None and head.tied_to is not None:
            head_source = next(n for n, m in modules.items() if m is head.tied_to) + ".weight"
        for name, tensor in weights:
            if name == head_source:
                head_tensor = tensor
            if any(name.endswith(s) for s in self.ignored_weights):
                continue
            if self.config.tie_word_embeddings and name == "lm_head.weight" and name not in params:
                continue
            kv_scale = kv_scale_target(name)
            if kv_scale is not None:  # a KV-cache scale: kept by its attention layer, read by the KV pool
                attn, which = kv_scale
                if not hasattr(modules.get(attn), "set_kv_scale"):
                    raise ValueError(f"checkpoint tensor '{name}' has no matching attention layer in {type(self).__name__}")
                if which is not None:
                    modules[attn].set_kv_scale(which, float(tensor.float().max()))
                continue
            target, shard = self._checkpoint_target(name)
            mod_name, _, pname = target.rpartition(".")
            module = modules.get(mod_name)
            if module is None or target not in params:
                raise ValueError(f"checkpoint tensor '{name}' has no matching parameter in {type(self).__name__}")
            loader = getattr(module, "weight_loader", None)
            if loader is not None:
                try:
                    loader(pname, tensor, shard)
                except ValueError as exc:  # the loader knows the parameter, not the checkpoint name
                    raise ValueError(f"checkpoint tensor '{name}': {exc}") from exc
            else:
                with torch.no_grad():
                    if params[target].shape != tensor.shape:
                        raise ValueError(f"shape mismatch for '{name}': checkpoint {tuple(tensor.shape)} "
                                         f"vs parameter {tuple(params[target].shape)}")
                    params[target].copy_(tensor)
            loaded.add(target)
        if head_tensor is not None and any(p.startswith("lm_head.") and p not in loaded for p in params):
            head.weight_loader("weight", head_tensor)  # the checkpoint has no head of its own (a GGUF file has)
            loaded.update(p for p in params if p.startswith("lm_head."))
        missing = sorted(set(params) - loaded)
        if missing:
            raise ValueError(f"weights missing from the checkpoint: {', '.join(missing[:8])}"
                             + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        for module in self.modules():
            finish = getattr(module, "process_weights_after_loading", None)
            if finish is not None:
                finish()


_EXPERT = re.compile(r"^(.*)\.experts\.(\d+)\.(\w+)\.(\w+)$")
_STACKED_EXPERTS = re.compile(r"^(.*)\.experts\.(gate_up_proj|down_proj)(?:_(\w+))?$")
