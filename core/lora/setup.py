"""Whether an engine serves LoRA, and the LoRAManager it builds before the model (every SDK Linear
asks the manager for its LoRALayer while the model is constructed)."""
from __future__ import annotations

from jackfield.config import LORA_TARGETS, Settings, parse_lora_path
from jackfield.lora.adapter import AdapterError, read_config
from jackfield.lora.manager import LoRAManager
from jackfield.sdk.lora import LoRARuntime

DEFAULT_MAX_RANK = 16


def lora_enabled(settings: Settings) -> bool:
    if settings.enable_lora is not None:
        return settings.enable_lora
    return bool(settings.lora_paths or settings.lora_dir)


def startup_adapters(settings: Settings) -> list[tuple[str, str]]:
    """(name, path) of every lora_paths entry; a name given twice is a ValueError."""
    pairs = [parse_lora_path(entry) for entry in settings.lora_paths]
    names = [name for name, _ in pairs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"lora_paths names the adapter '{dup}' more than once")
    return pairs


def max_rank(settings: Settings, adapters: list[tuple[str, str]]) -> int:
    if settings.max_lora_rank:
        return settings.max_lora_rank
    ranks = [DEFAULT_MAX_RANK]
    for name, path in adapters:
        from pathlib import Path

        r = read_config(Path(path), name).get("r")
        if isinstance(r, int):
            ranks.append(r)
    return max(ranks)


def build_lora_manager(setup) -> LoRAManager | None:
    """The engine's LoRAManager (None when LoRA is off). Raises ValueError on a bad configuration."""
    s = setup.settings
    if not lora_enabled(s):
        return None
    choice = setup.choices.get("lora")
    if choice is None or choice.info is None:
        reason = choice.reason if choice is not None else "no LoRA backend selected"
        raise ValueError(f"LoRA is on but no LoRA backend can run: {reason}")
    per_batch = s.max_loras_per_batch or s.max_loras
    if per_batch > s.max_loras:
        raise ValueError(f"max_loras_per_batch ({per_batch}) cannot exceed max_loras ({s.max_loras}): every adapter "
                         "of a batch needs a device slot")
    adapters = startup_adapters(s)
    try:
        rank = max_rank(s, adapters)
    except AdapterError as exc:
        raise ValueError(f"lora_paths: {exc}") from None
    runtime = LoRARuntime(setup.model_config, s.max_loras, rank, per_batch, setup.dtype, setup.device)
    model_cls = setup.choices["model"].info.cls
    return LoRAManager(runtime, choice.info.cls, model_cls.stacked_params, tuple(s.lora_target_modules or LORA_TARGETS))


def load_startup_adapters(manager: LoRAManager, settings: Settings) -> None:
    for name, path in startup_adapters(settings):
        try:
            manager.load(name, path)
        except AdapterError as exc:
            raise ValueError(f"lora_paths: {exc}") from None
