"""Configuration: one pydantic-settings model for everything the engine and the server take.

Sources, highest precedence first: CLI flags > environment (`JACKFIELD_<KEY>`) > config file
(TOML or YAML, `--config path`) > defaults. `load_settings` records where every value came from, and
an unknown key or an invalid value raises ConfigError naming the key, the value and its source.
"""
from __future__ import annotations

import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "JACKFIELD_"
# Environment variables with the prefix that are not settings (plugin filters, test and benchmark switches).
NON_SETTING_ENV = {"PLUGINS", "DISABLE_PLUGINS", "CACHE_DIR", "TEST_SMOLLM2", "DISABLE_FUSED_KERNELS", "DISABLE_PDL",
                   "GIT_COMMIT", "CUTLASS_LIB", "MOE_CONFIG_DIR"}


class Settings(BaseSettings):
    """Every engine and server setting. Field descriptions double as CLI help and docs."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX, protected_namespaces=())

    # --- model -------------------------------------------------------------------------------
    model: str | None = Field(None, description="Model path: an HF directory or a .gguf file; unset = embedded SmolLM2")
    tokenizer: str | None = Field(None, description="Tokenizer path (defaults to the model's)")
    load_format: Literal["auto", "safetensors", "gguf", "dummy"] = Field("auto", description="How weights are loaded")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="Compute dtype (auto: bf16 on GPU, fp32 on CPU)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device to run on")
    context_length: int | None = Field(None, gt=0, description="Override the model's maximum context length")
    seed: int = Field(0, description="Seed for dummy weights and unseeded sampling")
    served_model_name: str | None = Field(None, description="Model name reported by the API")
    # --- components --------------------------------------------------------------------------
    attention_backend: str = Field("auto", description="Attention backend name or auto")
    prefill_attention_backend: str | None = Field(None, description="Attention backend for prefill and mixed forwards (unset: attention_backend)")
    decode_attention_backend: str | None = Field(None, description="Attention backend for decode forwards and their CUDA graphs (unset: attention_backend)")
    quantization: str = Field("auto", description="Quantization method name or auto")
    moe_backend: str = Field("auto", description="MoE dispatcher name or auto")
    speculative_algorithm: str | None = Field(None, description="Speculative decoder: ngram, draft_model, eagle or a plugin's name (off when unset)")
    grammar_backend: str = Field("auto", description="Grammar backend name, auto or none")
    lora_backend: str = Field("auto", description="LoRA backend name or auto")
    plugin_choice: dict[str, str] = Field(default_factory=dict, description='Pick a plugin when two provide one name: {"attention.triton": "my-dist"}')
    # --- memory ------------------------------------------------------------------------------
    page_size: int = Field(1, ge=1, description="Tokens per KV page")
    mem_fraction_static: float | None = Field(None, gt=0, lt=1, description="GPU: fraction of memory for weights + KV cache")
    kv_cache_bytes: int | None = Field(None, gt=0, description="Byte budget of the KV cache (CPU default 1 GiB; on GPU it replaces mem_fraction_static)")
    max_total_tokens: int | None = Field(None, gt=0, description="Cap on KV slots in the pool")
    # --- scheduler ---------------------------------------------------------------------------
    max_running_requests: int | None = Field(None, gt=0, description="Most requests in the running batch")
    chunked_prefill_size: int = Field(2048, description="Token budget of one prefill chunk (-1 disables chunking)")
    max_prefill_tokens: int = Field(16384, gt=0, description="Token budget of one prefill batch")
    schedule_policy: Literal["fcfs", "lpm", "dfs-weight", "random"] = Field("fcfs", description="Waiting-queue order")
    schedule_conservativeness: float = Field(1.0, gt=0, description="Scales the future-token reserve of admission control")
    disable_radix_cache: bool = Field(False, description="Turn the RadixAttention prefix cache off")
    disable_overlap_schedule: bool | None = Field(None, description="Run scheduling and the forward serially (unset: overlap on CUDA, serial on CPU, where the CPU is the device)")
    disable_late_launch: bool = Field(False, description="Under overlap, plan the next decode step as soon as the running one is launched, instead of just before it ends (late launch: requests that arrive meanwhile join that step)")
    enable_mixed_chunk: bool = Field(True, description="Run prefill chunks and decodes in one forward when the backend can")
    stream_interval: int = Field(1, ge=1, description="Tokens between streamed chunks")
    # --- GPU fast path -----------------------------------------------------------------------
    disable_cuda_graph: bool = Field(False, description="Run decode eagerly, without CUDA graphs")
    cuda_graph_max_bs: int = Field(160, ge=1, description="Largest decode batch captured in a CUDA graph")
    enable_torch_compile: bool | None = Field(None, description="torch.compile the model's decode step (unset: on for decode steps on the CPU with quantized weights, for a dense model without LoRA or tensor parallelism, where per-operator overhead rules the step (with a speculative decoder: its plain steps, unless it reads hidden states); off on CUDA, whose graphs remove that overhead)")
    # --- structured outputs ------------------------------------------------------------------
    disable_jump_forward: bool = Field(False, description="Decode text the grammar forces token by token instead of appending it at once")
    grammar_compile_timeout: float = Field(60.0, gt=0, description="Seconds a constraint may take to compile before its request fails")
    tool_call_parser: str = Field("auto", description="Tool-call parser name, auto (from the chat template) or none")
    reasoning_parser: str = Field("auto", description="Reasoning parser name, auto (on by default only for reasoning templates) or none")
    # --- speculative decoding ----------------------------------------------------------------
    speculative_num_draft_tokens: int = Field(8, ge=1, le=64, description="Tokens per request in one verify forward, the last verified token included (drafts = this - 1)")
    speculative_num_steps: int = Field(5, ge=1, le=32, description="draft_model / eagle: depth of the draft tree (draft forwards per step)")
    speculative_eagle_topk: int = Field(4, ge=1, le=16, description="draft_model / eagle: children expanded per draft node (1: a chain)")
    speculative_draft_model_path: str | None = Field(None, description="draft_model: the draft checkpoint; eagle: the head directory")
    speculative_ngram_min_match: int = Field(1, ge=1, description="ngram: shortest suffix of a request's tokens that is looked up")
    speculative_ngram_max_match: int = Field(6, ge=1, description="ngram: longest suffix of a request's tokens that is looked up")
    speculative_ngram_max_trie_depth: int = Field(12, ge=2, description="ngram: depth of the trie over recent requests' tokens")
    speculative_ngram_capacity: int = Field(500_000, ge=1000, description="ngram: most trie nodes kept (the trie restarts past it)")
    speculative_load_aware: bool = Field(True, description="Turn speculation off per step where measured step times say plain decoding is faster")
    # --- quantization ------------------------------------------------------------------------
    kv_cache_dtype: Literal["auto", "fp8_e4m3"] = Field("auto", description="KV cache storage: auto (the compute dtype) or fp8_e4m3 (one byte per value, twice the tokens; per-layer scales from the checkpoint, else 1.0)")
    quantization_gemm_backend: Literal["auto", "triton", "torch"] = Field("auto", description="GPU matmuls of quantized layers: auto (the measured choice per batch size; INT4 with bf16 and groups of 128 or 256: PyTorch's tinygemm up to 32 rows), triton (Triton kernels), torch (torch._scaled_mm for FP8, dequantize + cuBLAS for integer weights)")
    quantize_lm_head: bool = Field(False, description="Quantize the LM head too when the quantization method converts a plain checkpoint's weights on load (fp8, int8_wo); a checkpoint that stores its head quantized (GPTQ with lm_head: true) loads it quantized either way")
    # --- LoRA --------------------------------------------------------------------------------
    lora_paths: list[str] = Field(default_factory=list, description="LoRA adapters loaded at start, each name=path (a bare path is named after its directory)")
    lora_dir: str | None = Field(None, description="Directory that run-time loads read adapters from, by name; load paths outside it are refused")
    enable_lora: bool | None = Field(None, description="Serve LoRA adapters (unset: on when lora_paths or lora_dir is given)")
    max_loras: int = Field(8, ge=1, description="Device slots of the adapter pool; more adapters wait in host memory and are swapped in LRU order")
    max_loras_per_batch: int | None = Field(None, ge=1, description="Most distinct adapters in one batch (unset: max_loras)")
    max_lora_rank: int | None = Field(None, ge=1, description="Largest adapter rank served (unset: the largest rank of lora_paths, at least 16)")
    lora_target_modules: list[str] | None = Field(None, description="Modules that get adapter slots, of q/k/v/o/gate/up/down_proj (unset: all)")
    # --- distributed -------------------------------------------------------------------------
    tp_size: int = Field(1, ge=1, description="Tensor parallel size: ranks (one process and device each) a model's heads, MLP and vocabulary are split over")
    ep_size: int = Field(1, ge=1, description="Expert parallel size: ranks the routed experts of an MoE model are spread over (1 or tp_size), tokens dispatched with all-to-all")
    nnodes: int = Field(1, ge=1, description="Nodes the tp_size ranks run on (tp_size / nnodes each); run the same command on every node with its --node-rank")
    node_rank: int = Field(0, ge=0, description="This node's index in 0..nnodes-1; node 0 runs the HTTP server and the scheduler")
    dist_init_addr: str | None = Field(None, description="host:port of node 0 where the ranks meet (torch.distributed TCP store); needed with nnodes > 1 (unset: a free loopback port)")
    dist_timeout: float = Field(120.0, gt=0, description="Seconds every rank waits for the others to join (and for node 0 to be reachable) before failing")
    # --- server ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="HTTP bind address")
    port: int = Field(30000, ge=1, le=65535, description="HTTP port")
    api_key: str | None = Field(None, description="Require this bearer token on every API request")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    warmup: bool = Field(True, description="Run one warm-up generation before reporting healthy")
    # --- embeddings --------------------------------------------------------------------------
    is_embedding: bool | None = Field(None, description="Serve the model as an embedding model (generation refused); unset: detect from the model directory (sentence-transformers pooling config or a headless *Model architecture)")
    embedding_pooling: Literal["auto", "last", "mean"] = Field("auto", description="Embedding pooling (auto: the sentence-transformers config, else last token)")
    embedding_normalize: bool | None = Field(None, description="L2-normalize embeddings (unset: the sentence-transformers config, else yes)")
    # --- data parallelism (replicas behind one server, core/router/) ------------------------------
    dp_size: int = Field(1, ge=1, description="Engine replicas behind one server, each with its own scheduler and KV pool (on GPU replica i uses devices [i*tp, (i+1)*tp)); a cache-aware router picks the replica of each request")
    router_cache_threshold: float = Field(0.3, ge=0, le=1, description="dp_size > 1: a request goes to the replica whose cached prefix covers more than this fraction of its prompt (else to the least loaded)")
    router_balance_abs_threshold: int = Field(64, ge=0, description="dp_size > 1: replicas are imbalanced, and the least loaded one is chosen regardless of cache hits, when the most and least loaded differ by more than this many requests in flight...")
    router_balance_rel_threshold: float = Field(1.5, ge=1, description="...and the most loaded has more than this times the least loaded's requests in flight")
    router_max_tree_tokens: int | None = Field(None, gt=0, description="dp_size > 1: tokens the router remembers per replica (least recently used prefixes evicted; unset: the replica's KV pool size)")
    # --- files and batches (OpenAI Batch API) ---------------------------------------------------
    file_storage_dir: str | None = Field(None, description="Directory of uploaded and generated files (/v1/files; unset: <cache dir>/files)")
    max_upload_bytes: int = Field(100 << 20, gt=0, description="Largest file /v1/files accepts (413 above)")
    batch_concurrency: int = Field(8, ge=1, description="Requests of one batch in flight at once (low priority in the scheduler)")
    # --- reliability and security ------------------------------------------------------------
    watchdog_timeout: float = Field(300.0, gt=0, description="Seconds the scheduler may spend in one loop iteration (one forward) before the server declares it stuck, dumps its stacks and exits")
    shutdown_timeout: float = Field(30.0, ge=0, description="On SIGTERM: seconds to let in-flight requests finish before aborting them")
    max_queued_requests: int | None = Field(None, ge=0, description="Most requests waiting beyond max_running_requests; more get 503 with Retry-After (unset: no limit)")
    max_request_bytes: int = Field(64 << 20, gt=0, description="Largest accepted HTTP request body in bytes; larger gets 413")
    request_timeout: float | None = Field(None, gt=0, description="Default and largest per-request time limit in seconds (a request may ask for less with `timeout`; unset: none)")
    metrics_public: bool = Field(False, description="Serve /metrics without the API key")
    allowed_origins: list[str] = Field(default_factory=list, description="CORS: origins allowed to call the API from a browser (\"*\" for any; empty: CORS off)")
    file_root: str | None = Field(None, description="Directory below which routes that take a file path (adapter loading) may read; unset: such routes refuse every path")

    @field_validator("lora_paths")
    @classmethod
    def _check_lora_paths(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_lora_path(entry)
        return value

    @field_validator("lora_target_modules")
    @classmethod
    def _check_lora_targets(cls, value: list[str] | None) -> list[str] | None:
        bad = [m for m in value or () if m not in LORA_TARGETS]
        if bad or value == []:
            raise ValueError(f"unknown module(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(LORA_TARGETS)}")
        return value


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_lora_path(entry: str) -> tuple[str, str]:
    """'name=path' (or a bare path, named after its last directory) -> (name, path)."""
    name, sep, path = entry.partition("=")
    if not sep:
        path, name = entry, Path(entry.rstrip("/")).name
    if not path:
        raise ValueError(f"'{entry}' has no adapter path (expected name=path)")
    if not LORA_NAME.fullmatch(name):
        raise ValueError(f"adapter name '{name}' in '{entry}' must be letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name, path


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key, value and source."""


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    sources: dict[str, str]  # field -> "default" | "file:<path>" | "env:<VAR>" | "cli:--flag"


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as exc:
        raise ConfigError(f"config file {p} cannot be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a table of settings, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _env_values(env: dict[str, str]) -> dict[str, tuple[Any, str]]:
    out = {}
    fields = Settings.model_fields
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        key = var[len(ENV_PREFIX):].lower()
        if key.upper() in NON_SETTING_ENV:
            continue
        if key not in fields:
            raise ConfigError(f"unknown setting '{key}' (from env:{var}={raw!r})")
        value: Any = raw
        if is_container(fields[key].annotation):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"invalid value {raw!r} for setting '{key}' (from env:{var}): "
                                  f"expected JSON ({exc})") from None
        out[key] = (value, f"env:{var}")
    return out


def is_container(annotation) -> bool:
    """A dict or list setting (optionally `| None`): JSON in the environment, several values on the CLI."""
    kinds = [annotation, *typing.get_args(annotation)] if typing.get_origin(annotation) is not None else [annotation]
    return any(typing.get_origin(k) in (dict, list) for k in kinds)


def load_settings(config_file: str | None = None, cli: dict[str, Any] | None = None,
                  env: dict[str, str] | None = None) -> LoadedSettings:
    """Merge defaults < file < env < CLI, validate, and remember each value's source."""
    env = dict(os.environ) if env is None else env
    merged: dict[str, tuple[Any, str]] = {}
    if config_file:
        for k, v in read_config_file(config_file).items():
            if k not in Settings.model_fields:
                raise ConfigError(f"unknown setting '{k}' (from file:{config_file})")
            merged[k] = (v, f"file:{config_file}")
    merged.update(_env_values(env))
    for k, v in (cli or {}).items():
        if k not in Settings.model_fields:
            raise ConfigError(f"unknown setting '{k}' (from cli)")
        merged[k] = (v, f"cli:--{k.replace('_', '-')}")
    values = {k: v for k, (v, _) in merged.items()}
    try:
        settings = _validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        value, source = merged.get(key, (None, "default"))
        raise ConfigError(f"invalid value {value!r} for setting '{key}' (from {source}): {err['msg']}") from None
    sources = {k: merged[k][1] if k in merged else "default" for k in Settings.model_fields}
    return LoadedSettings(settings, sources)


def _validate(values: dict[str, Any]) -> Settings:
    # Build through the plain pydantic path: no implicit env or dotenv reading, since the merge
    # above already applied the environment with source tracking.
    return Settings.model_validate(values)


def settings_for(**overrides: Any) -> Settings:
    """Programmatic settings (the offline Engine): defaults < env < keyword arguments."""
    return load_settings(cli=overrides).settings
