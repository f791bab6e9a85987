"""Loading and saving EAGLE heads in the published layouts (see eagle_head.py for the names)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from jackfield.sdk import ModelConfig
from jackfield_plugins.spec.eagle_head import EAGLE_ARCHS, EagleHead


class HeadMismatch(ValueError):
    """The head does not fit the target (hidden size, vocabulary, architecture)."""


def read_config(path: str) -> tuple[dict, ModelConfig]:
    p = Path(path).expanduser()
    cfg_file = p / "config.json" if p.is_dir() else p
    if not cfg_file.is_file():
        raise FileNotFoundError(f"EAGLE head '{path}' has no config.json")
    hf = json.loads(cfg_file.read_text())
    arch = (hf.get("architectures") or ["?"])[0]
    if arch not in EAGLE_ARCHS:
        raise HeadMismatch(f"EAGLE head '{path}' has architecture {arch!r}; supported: {', '.join(EAGLE_ARCHS)}")
    return hf, ModelConfig.from_hf(hf)


def _param_name(name: str) -> str:
    name = name.removeprefix("model.")
    for part in (".self_attn.", ".mlp."):
        name = name.replace(part, ".")
    if name == "midlayer.hidden_norm.weight":
        return "hidden_norm"
    for norm in ("input_layernorm", "post_attention_layernorm"):
        name = name.replace(f"{norm}.weight", norm)
    return "norm" if name == "norm.weight" else name


def load_head(path: str, target_config: ModelConfig, target: nn.Module, device: torch.device,
              dtype: torch.dtype, max_pos: int) -> EagleHead:
    """Build and load the head at `path` for `target`; HeadMismatch names both values when the
    head's hidden size (EAGLE-3: target_hidden_size) or vocabulary differs from the target's."""
    from safetensors.torch import load_file

    hf, config = read_config(path)
    version = EAGLE_ARCHS[config.architectures[0]]
    want = hf.get("target_hidden_size") or config.hidden_size if version == 3 else config.hidden_size
    if want != target_config.hidden_size:
        raise HeadMismatch(f"EAGLE head '{path}' expects target hidden size {want}, the target's hidden size is "
                           f"{target_config.hidden_size}")
    if config.vocab_size != target_config.vocab_size:
        raise HeadMismatch(f"EAGLE head '{path}' has vocabulary size {config.vocab_size}, the target has "
                           f"{target_config.vocab_size}")
    head = EagleHead(config, hf, target_config.hidden_size, max_pos)
    ids = (hf.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    head.aux_layer_ids = tuple(ids) if ids else None
    weights = {}
    for f in sorted(Path(path).expanduser().glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if not weights:
        bins = sorted(Path(path).expanduser().glob("*.bin"))
        for f in bins:
            weights.update(torch.load(str(f), map_location="cpu", weights_only=True))
    if not weights:
        raise FileNotFoundError(f"EAGLE head '{path}' has no *.safetensors or *.bin weights")
    extra = {}
    for key in ("embed_tokens.weight", "model.embed_tokens.weight", "lm_head.weight", "d2t", "t2d"):
        if key in weights:
            extra[key.removeprefix("model.")] = weights.pop(key)
    params = dict(head.named_parameters())
    missing = set(params)
    for name, tensor in weights.items():
        target_name = _param_name(name)
        if target_name not in params:
            raise ValueError(f"EAGLE head '{path}': checkpoint tensor '{name}' matches no parameter of the head")
        if params[target_name].shape != tensor.shape:
            raise ValueError(f"EAGLE head '{path}': '{name}' has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(params[target_name].shape)}")
        with torch.no_grad():
            params[target_name].copy_(tensor)
        missing.discard(target_name)
    if missing:
        raise ValueError(f"EAGLE head '{path}' lacks weights for: {', '.join(sorted(missing)[:6])}")
    head = head.to(device=device, dtype=dtype).eval()
    _attach_vocab(head, extra, target, hf, target_config, device, dtype)
    return head


def _attach_vocab(head: EagleHead, extra: dict, target: nn.Module, hf: dict, target_config: ModelConfig,
                  device, dtype) -> None:
    """The embedding and LM head: the checkpoint's own where it has them, else the target's."""
    embed, lm_head = target.model.embed_tokens, target.lm_head
    if "embed_tokens.weight" in extra:
        embed = nn.Embedding.from_pretrained(extra["embed_tokens.weight"].to(device, dtype), freeze=True)
    if "lm_head.weight" in extra:
        w = extra["lm_head.weight"].to(device, dtype)
        lm_head = nn.Linear(w.shape[1], w.shape[0], bias=False, device=device, dtype=dtype)
        lm_head.weight.data.copy_(w)
    elif head.version == 3 and (hf.get("draft_vocab_size") or target_config.vocab_size) != target_config.vocab_size:
        raise ValueError("EAGLE-3 head with a draft vocabulary lacks lm_head.weight")
    head.share(embed, lm_head)
    if head.version == 3:
        head.target_vocab = target_config.vocab_size
        if "d2t" in extra:
            head.d2t = extra["d2t"].to(device=device, dtype=torch.int64)


def save_head(head: EagleHead, out_dir: str) -> None:
    """Write an EAGLE-1/2 head as config.json (its HF config, `head.hf`) + model.safetensors (the
    LlamaForCausalLMEagle layout, without embed_tokens / lm_head: they are the target's)."""
    from safetensors.torch import save_file

    if head.version != 1:
        raise ValueError("only EAGLE-1/2 heads are saved")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"fc.weight": head.fc.weight, "fc.bias": head.fc.bias}
    for i, layer in enumerate(head.layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"layers.{i}.self_attn.{proj}.weight"] = getattr(layer, proj).weight
        for proj in ("gate_proj", "up_proj", "down_proj"):
            tensors[f"layers.{i}.mlp.{proj}.weight"] = getattr(layer, proj).weight
        if layer.input_layernorm is not None:
            tensors[f"layers.{i}.input_layernorm.weight"] = layer.input_layernorm
        tensors[f"layers.{i}.post_attention_layernorm.weight"] = layer.post_attention_layernorm
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**head.hf, "torch_dtype": "float32"}, indent=2) + "\n")
