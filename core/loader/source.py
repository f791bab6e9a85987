"""Where a model comes from: resolve `--model` / `--load-format` into an HF-style directory."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    path: Path            # directory holding config.json (+ weights + tokenizer)
    load_format: str      # "safetensors" | "dummy"
    hf_config: dict
    origin: str           # what the user gave (a .gguf file, a directory, the default model)
    gguf_file: Path | None = None  # the GGUF file `path` was converted from, for methods that keep its blocks


def resolve_model(model: str | None, load_format: str = "auto") -> ModelSource:
    from jackfield.loader.default_model import default_model_path

    origin = model or default_model_path()
    p = Path(origin).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path '{origin}' does not exist")
    fmt, gguf_file = load_format, None
    if fmt == "auto":
        fmt = "gguf" if p.is_file() and p.suffix == ".gguf" else "safetensors"
    if fmt == "gguf":
        if not p.is_file():
            raise ValueError(f"--load-format gguf needs a .gguf file, got directory '{origin}'")
        from jackfield.loader.gguf import convert_gguf

        gguf_file = p.resolve()
        p, fmt = convert_gguf(str(p)), "safetensors"
    config_path = p if p.is_file() and p.suffix == ".json" else p / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json for model '{origin}' (looked at {config_path})")
    try:
        hf_config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read model config {config_path}: {exc}") from exc
    if fmt == "safetensors" and p.is_file():
        raise ValueError(f"'{origin}' is a config file; use --load-format dummy or give the model directory")
    return ModelSource(path=config_path.parent, load_format=fmt, hf_config=hf_config, origin=str(origin),
                       gguf_file=gguf_file)
