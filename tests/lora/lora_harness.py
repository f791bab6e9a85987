"""LoRA test helpers: PEFT adapters made by `peft` itself on a transformers model, with random
non-zero A and B (peft starts B at zero), saved as PEFT directories; and the base checkpoints.

`make_adapter(model, directory, spec)` wraps `model` with `get_peft_model`, fills every lora_A /
lora_B with seeded random values, saves the adapter and unwraps the model again (unchanged), so one
base model serves every adapter of a module. `peft_forward(model, directory)` does the same around
a PeftModel loaded from the directory, to compute the reference.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    rank: int
    targets: tuple[str, ...]
    alpha: float = 16
    rslora: bool = False
    seed: int = 0
    strength: float = 1.0  # scales B: how far the adapter moves the model
    extra: dict = field(default_factory=dict)


def make_adapter(model, directory: Path, spec: AdapterSpec) -> Path:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets), use_rslora=spec.rslora,
                        lora_dropout=0.0, **spec.extra)
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * spec.strength / math.sqrt(p.shape[1]))
    out = Path(directory) / spec.name
    peft_model.save_pretrained(str(out))
    peft_model.unload()
    return out


@contextlib.contextmanager
def peft_model(model, directory: Path | None):
    """`model` with the adapter at `directory` applied by peft (the base model when None)."""
    if directory is None:
        yield model
        return
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(model, str(directory))
    try:
        yield wrapped.eval()
    finally:
        wrapped.unload()


def peft_greedy(model, directory: Path | None, prompt: list[int], new_tokens: int, eos: list[int]) -> list[int]:
    with peft_model(model, directory) as m, torch.no_grad():
        x = torch.tensor([prompt])
        out = m.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=new_tokens,
                         eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0)
    return out[0, len(prompt):].tolist()


def peft_logits(model, directory: Path | None, ids: list[int]) -> torch.Tensor:
    with peft_model(model, directory) as m, torch.no_grad():
        return m(torch.tensor([ids])).logits[0].float()
