"""Convert a GGUF file into a Hugging Face style model directory, cached on disk.

The directory holds ``config.json``, float32 safetensors weights under Hugging Face names and
the tokenizer files, so the rest of the loader only ever reads one checkpoint format. Weights
equal what ``transformers`` loads from the same GGUF file, including the reversal of the q/k
row permutation that llama.cpp applies to Llama checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONVERTER_VERSION = 1
"""Bumped whenever the converted output changes, so stale cache entries are never reused."""

SHARD_BYTES = 4 << 30
"""Largest safetensors file written; bigger models are split into an indexed set of shards."""


@dataclass(frozen=True)
class GGUFArch:
    """How one GGUF ``general.architecture`` maps onto a Hugging Face model class."""

    hf_architecture: str
    model_type: str
    permute_qk: bool


ARCHITECTURES = {
    "llama": GGUFArch("LlamaForCausalLM", "llama", permute_qk=True),
    "qwen2": GGUFArch("Qwen2ForCausalLM", "qwen2", permute_qk=False),
    "qwen3": GGUFArch("Qwen3ForCausalLM", "qwen3", permute_qk=False),
}

GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
SKIPPED_TENSORS = {"rope_freqs"}
REQUIRED = object()


def convert_gguf(path: str, cache_dir: str | None = None) -> Path:
    """Return a Hugging Face style directory converted from the GGUF file at ``path``.

    The result lives under ``<cache root>/gguf/<key>``, where the cache root is ``cache_dir``,
    else ``$JACKFIELD_CACHE_DIR``, else ``~/.cache/jackfield``, and the key hashes the file's
    absolute path, size, mtime and ``CONVERTER_VERSION``. A cached directory is returned without
    opening the file. A new one is written to a temporary sibling and renamed into place, so an
    interrupted conversion leaves nothing behind. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` for an unreadable file or an unsupported architecture.
    """
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    target = cache_root(cache_dir) / "gguf" / cache_key(source)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o755)
        write_hf_directory(source, staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_root(cache_dir: str | None = None) -> Path:
    """The jackfield cache root: ``cache_dir``, else ``$JACKFIELD_CACHE_DIR``, else ``~/.cache/jackfield``."""
    root = cache_dir or os.environ.get("JACKFIELD_CACHE_DIR") or "~/.cache/jackfield"
    return Path(root).expanduser()


def cache_key(source: Path) -> str:
    """Hash of the file's identity and the converter version; changes when the file does."""
    stat = source.stat()
    identity = f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}\0{CONVERTER_VERSION}"
    return hashlib.sha256(identity.encode()).hexdigest()[:24]


def write_hf_directory(source: Path, out_dir: Path) -> None:
    """Write config, weights and tokenizer converted from ``source`` into the existing ``out_dir``."""
    reader = open_gguf(source)
    arch_name = str(metadata(reader, "general.architecture", ""))
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"GGUF architecture {arch_name!r} in {source} is not supported (supported: {supported})")
    try:
        config = hf_config(reader, arch_name, arch)
    except ValueError as exc:
        raise ValueError(f"cannot convert GGUF file {source}: {exc}") from exc
    write_weights(reader, arch, config, out_dir, desc=f"Dequantizing {source.name}")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(source, reader, out_dir)


def open_gguf(source: Path):
    """Open ``source`` with ``gguf.GGUFReader``, turning any parse failure into ``ValueError``."""
    from gguf import GGUFReader

    try:
        return GGUFReader(source)
    except Exception as exc:
        raise ValueError(f"cannot read GGUF file {source}: {exc}") from exc


def metadata(reader, key: str, default=None):
    """The decoded value of one GGUF metadata field, or ``default`` when absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def hf_config(reader, arch_name: str, arch: GGUFArch) -> dict:
    """Build the Hugging Face ``config.json`` dict from the GGUF metadata."""
    def meta(key, default=REQUIRED):
        value = metadata(reader, f"{arch_name}.{key}", default)
        if value is REQUIRED:
            raise ValueError(f"metadata key {arch_name}.{key} is missing")
        return value

    tensor_names = {tensor.name for tensor in reader.tensors}
    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    vocab = meta("vocab_size", None)
    if vocab is None and "tokenizer.ggml.tokens" in reader.fields:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    if vocab is None:
        vocab = meta("vocab_size")
    config = {
        "architectures": [arch.hf_architecture],
        "model_type": arch.model_type,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(meta("feed_forward_length")),
        "num_hidden_layers": int(meta("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta("attention.head_count_kv", heads)),
        "head_dim": int(meta("attention.key_length", meta("rope.dimension_count", hidden // heads))),
        "hidden_act": "silu",
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "torch_dtype": "float32",
    }
    for name in ("bos", "eos", "padding"):
        token_id = metadata(reader, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config[f"{name.replace('padding', 'pad')}_token_id"] = int(token_id)
    scaling = rope_scaling(reader, arch_name)
    if scaling:
        config["rope_scaling"] = scaling
    return config


def rope_scaling(reader, arch_name: str) -> dict | None:
    """The ``rope_scaling`` dict from ``<arch>.rope.scaling.*`` metadata, or None when unscaled."""
    prefix = f"{arch_name}.rope.scaling."
    kind = metadata(reader, prefix + "type")
    if kind in (None, "none"):
        return None
    scaling = {"rope_type": kind, "type": kind}
    renames = {"original_context_length": "original_max_position_embeddings", "attn_factor": "attention_factor"}
    for key in reader.fields:
        suffix = key[len(prefix):] if key.startswith(prefix) else None
        if suffix and suffix != "type":
            scaling[renames.get(suffix, suffix.removeprefix("yarn_"))] = metadata(reader, key)
    return scaling


def hf_tensor_name(gguf_name: str) -> str | None:
    """Map a GGUF tensor name to its Hugging Face name; None for tensors HF does not keep."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in SKIPPED_TENSORS:
        return None
    if stem in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}.{kind}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no Hugging Face equivalent")


def unpermute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q or k projection (weight or bias)."""
    half_dim = weights.shape[0] // n_head // 2
    rows = weights.reshape(n_head, half_dim, 2, *weights.shape[1:])
    return rows.swapaxes(2, 1).reshape(weights.shape)


def hf_tensors(reader, arch: GGUFArch, config: dict, desc: str):
    """Yield ``(HF name, float32 tensor)`` for each kept tensor, dequantizing one at a time."""
    import torch
    from gguf.quants import dequantize
    from tqdm import tqdm

    for tensor in tqdm(reader.tensors, desc=desc, unit="tensor"):
        name = hf_tensor_name(tensor.name)
        if name is None:
            continue
        weights = dequantize(tensor.data, tensor.tensor_type)
        weights = weights.reshape([int(dim) for dim in reversed(tensor.shape)])
        if arch.permute_qk and ".self_attn.q_proj." in name:
            weights = unpermute_qk(weights, config["num_attention_heads"])
        elif arch.permute_qk and ".self_attn.k_proj." in name:
            weights = unpermute_qk(weights, config["num_key_value_heads"])
        yield name, torch.from_numpy(np.array(weights, dtype=np.float32))


def write_weights(reader, arch: GGUFArch, config: dict, out_dir: Path, desc: str) -> None:
    """Save the converted tensors as ``model.safetensors``, or as indexed shards when large."""
    shard_names: list[list[str]] = []
    shard: dict = {}
    for name, value in hf_tensors(reader, arch, config, desc):
        if shard and sum(t.nbytes for t in shard.values()) + value.nbytes > SHARD_BYTES:
            shard_names.append(save_shard(shard, out_dir / f"shard-{len(shard_names)}.safetensors"))
            shard = {}
        shard[name] = value
    shard_names.append(save_shard(shard, out_dir / f"shard-{len(shard_names)}.safetensors"))
    if len(shard_names) == 1:
        os.replace(out_dir / "shard-0.safetensors", out_dir / "model.safetensors")
        return
    weight_map = {}
    for index, names in enumerate(shard_names):
        file_name = f"model-{index + 1:05d}-of-{len(shard_names):05d}.safetensors"
        os.replace(out_dir / f"shard-{index}.safetensors", out_dir / file_name)
        weight_map.update(dict.fromkeys(names, file_name))
    index_json = {"metadata": {}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")


def save_shard(tensors: dict, file: Path) -> list[str]:
    """Write ``tensors`` to one safetensors file and return their names."""
    from safetensors.torch import save_file

    save_file(tensors, str(file), metadata={"format": "pt"})
    return list(tensors)


def write_tokenizer(source: Path, reader, out_dir: Path) -> None:
    """Build the HF fast tokenizer from the GGUF file and save it, chat template included."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    except Exception as exc:
        raise ValueError(f"cannot build a tokenizer from GGUF file {source}: {exc}") from exc
    template = metadata(reader, "tokenizer.chat_template")
    if template and not tokenizer.chat_template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(str(out_dir))
