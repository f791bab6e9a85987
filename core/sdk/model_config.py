"""ModelConfig: the one normalized view of a model's hyper-parameters.

Built once at the boundary from a Hugging Face config (a config.json dict, or the dict the GGUF
loader derives from GGUF metadata). No layer, backend or quantizer reads the HF config after this.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rotary_dim: int = 128
    scaling_type: str | None = None  # None | "linear" | "llama3" | "yarn" | "dynamic"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0          # yarn: 0 = unset; with mscale_all_dim, attention = mscale ratio
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True        # yarn: round the correction range to whole dimensions


@dataclass(frozen=True)
class MoEParams:
    """Mixture-of-experts hyper-parameters, as the checkpoint states them (architectures with
    expert layers; the model plugin turns them into a jackfield.sdk.MoEConfig)."""

    num_experts: int
    top_k: int
    intermediate_size: int             # per routed expert
    shared_intermediate_size: int = 0  # the shared expert(s) together; 0 = none
    norm_topk_prob: bool | None = None  # None: the checkpoint does not say (the architecture's default)
    scoring: str | None = None         # "softmax" | "sigmoid" (DeepSeek scoring_func); None: not stated
    topk_method: str | None = None     # DeepSeek: greedy | group_limited_greedy | noaux_tc
    num_groups: int = 1                # DeepSeek n_group
    topk_groups: int = 1               # DeepSeek topk_group
    routed_scaling_factor: float = 1.0
    first_dense_layers: int = 0        # DeepSeek first_k_dense_replace
    sparse_step: int = 1               # Qwen-MoE decoder_sparse_step
    dense_layers: tuple[int, ...] = ()  # Qwen-MoE mlp_only_layers

    def is_sparse(self, layer_id: int) -> bool:
        """Whether layer `layer_id` has experts (the others have a dense MLP)."""
        return (layer_id >= self.first_dense_layers and layer_id not in self.dense_layers
                and (layer_id + 1) % self.sparse_step == 0)


@dataclass(frozen=True)
class MLAParams:
    """Multi-head latent attention (DeepSeek-V2/V3): q and kv are projected through low-rank latents."""

    q_lora_rank: int | None  # None: q comes from one full projection
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool = True  # rotary pairs are adjacent dimensions (x0, x1), (x2, x3), …

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class ModelConfig:
    architectures: tuple[str, ...]
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    hidden_act: str = "silu"
    attention_bias: bool = False
    sliding_window: int | None = None
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    quantization: str | None = None
    quantization_config: dict = field(default_factory=dict, hash=False, compare=False)
    """The checkpoint's `quantization_config` as config.json holds it ({} when plain); read only by the
    selected quantization method."""
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    layer_types: tuple[str, ...] = ()  # per layer "full_attention" | "sliding_attention"; () = all alike
    moe: MoEParams | None = None       # architectures with expert layers
    mla: MLAParams | None = None       # architectures with multi-head latent attention

    @property
    def context_length(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        hf = dict(hf.get("text_config") or {}, **{k: v for k, v in hf.items() if k != "text_config"})
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        quant = hf.get("quantization_config") or {}
        use_sw = hf.get("use_sliding_window", hf.get("model_type") in ("mistral", "mixtral"))
        num_layers = hf["num_hidden_layers"]
        layer_types = tuple(hf.get("layer_types") or ())
        if not layer_types and use_sw and hf.get("max_window_layers") is not None:
            # Qwen2/Qwen3 configs without layer_types: layers below max_window_layers attend fully
            layer_types = tuple("sliding_attention" if i >= hf["max_window_layers"] else "full_attention"
                                for i in range(num_layers))
        return cls(
            architectures=tuple(hf.get("architectures") or ()),
            model_type=hf.get("model_type", ""),
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf.get("intermediate_size", 4 * hf["hidden_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope=_rope_from_hf(hf, hf["qk_rope_head_dim"] if "kv_lora_rank" in hf else head_dim),
            hidden_act=hf.get("hidden_act", "silu"),
            attention_bias=bool(hf.get("attention_bias", False)),
            sliding_window=hf.get("sliding_window") if use_sw else None,
            torch_dtype=str(hf.get("torch_dtype") or hf.get("dtype") or "") or None,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            quantization=quant.get("quant_method"),
            quantization_config=dict(quant),
            num_experts=_num_experts(hf),
            num_experts_per_tok=hf.get("num_experts_per_tok") or 0,
            moe_intermediate_size=hf.get("moe_intermediate_size") or 0,
            layer_types=layer_types if len(layer_types) == num_layers else (),
            moe=_moe_from_hf(hf),
            mla=_mla_from_hf(hf),
        )


def _num_experts(hf: dict[str, Any]) -> int:
    return hf.get("num_experts") or hf.get("num_local_experts") or hf.get("n_routed_experts") or 0


def _moe_from_hf(hf: dict[str, Any]) -> MoEParams | None:
    if not _num_experts(hf):
        return None
    expert_size = hf.get("moe_intermediate_size") or hf["intermediate_size"]
    shared = hf.get("shared_expert_intermediate_size") or (hf.get("n_shared_experts") or 0) * expert_size
    return MoEParams(
        num_experts=_num_experts(hf), top_k=hf["num_experts_per_tok"], intermediate_size=expert_size,
        shared_intermediate_size=shared, norm_topk_prob=hf.get("norm_topk_prob"), scoring=hf.get("scoring_func"),
        topk_method=hf.get("topk_method"), num_groups=hf.get("n_group") or 1, topk_groups=hf.get("topk_group") or 1,
        routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0),
        first_dense_layers=hf.get("first_k_dense_replace") or 0, sparse_step=hf.get("decoder_sparse_step") or 1,
        dense_layers=tuple(hf.get("mlp_only_layers") or ()))


def _mla_from_hf(hf: dict[str, Any]) -> MLAParams | None:
    if "kv_lora_rank" not in hf:
        return None
    return MLAParams(q_lora_rank=hf.get("q_lora_rank"), kv_lora_rank=hf["kv_lora_rank"],
                     qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
                     v_head_dim=hf["v_head_dim"], rope_interleave=bool(hf.get("rope_interleave", True)))


def _rope_from_hf(hf: dict[str, Any], head_dim: int) -> RopeConfig:
    """Rope parameters from `rope_parameters` (transformers >= 5) or legacy `rope_scaling` +
    top-level `rope_theta`, with the defaults transformers' `standardize_rope_params` fills in."""
    scaling = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = scaling.get("rope_theta") or hf.get("rope_theta") or 10000.0
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        kind = None
    partial = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor")) or 1.0
    rotary_dim = int(head_dim * partial)
    max_pos = hf.get("max_position_embeddings", 2048)
    orig = scaling.get("original_max_position_embeddings")
    if kind in ("llama3", "yarn", "longrope"):
        # a top-level value (Phi-3 style) wins; else the pretraining length is max_position_embeddings
        orig = hf.get("original_max_position_embeddings") or orig or max_pos
    factor = scaling.get("factor")
    if factor is None:
        factor = max_pos / orig if kind == "yarn" else 1.0
    attention = scaling.get("attention_factor")
    return RopeConfig(
        theta=float(theta),
        rotary_dim=rotary_dim,
        scaling_type=kind,
        factor=float(factor),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=orig,
        beta_fast=float(scaling.get("beta_fast") or 32.0),
        beta_slow=float(scaling.get("beta_slow") or 1.0),
        mscale=float(scaling.get("mscale") or 0.0),
        mscale_all_dim=float(scaling.get("mscale_all_dim") or 0.0),
        attention_factor=float(attention) if attention is not None else None,
        truncate=bool(scaling.get("truncate", True)),
    )
