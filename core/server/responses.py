"""Response bodies of every route, as pydantic models, for the OpenAPI contract (openapi.py).

They document what the handlers return (the handlers build plain dicts); the fuzzing test checks
every response against them. They allow extra keys, so a feature that adds a field to a response
does not break the contract before it documents the field here.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict


class Doc(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


# ---- errors -------------------------------------------------------------------------------------
class ErrorDetail(Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Doc):
    """Every error but those below /v1/messages (OpenAI's shape)."""

    error: ErrorDetail


class AnthropicErrorDetail(Doc):
    type: str
    message: str


class AnthropicErrorResponse(Doc):
    """Errors below /v1/messages (Anthropic's shape)."""

    type: Literal["error"]
    error: AnthropicErrorDetail


# ---- OpenAI -------------------------------------------------------------------------------------
class PromptTokensDetails(Doc):
    cached_tokens: int


class Usage(Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(Doc):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(Doc):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(Doc):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class Completion(Doc):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Doc):
    object: Literal["list"]
    data: list[ModelCard]


# ---- Anthropic ----------------------------------------------------------------------------------
class TextBlock(Doc):
    type: str
    text: str | None = None


class AnthropicUsage(Doc):
    input_tokens: int
    output_tokens: int


class Message(Doc):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[TextBlock]
    stop_reason: str | None
    stop_sequence: str | None
    usage: AnthropicUsage


# ---- Ollama -------------------------------------------------------------------------------------
class OllamaDone(Doc):
    model: str
    created_at: str
    done: bool
    done_reason: str | None = None
    total_duration: int | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None


class OllamaGenerateResponse(OllamaDone):
    response: str


class OllamaChatMessage(Doc):
    role: str
    content: str


class OllamaChatResponse(OllamaDone):
    message: OllamaChatMessage


class OllamaModel(Doc):
    name: str
    model: str
    modified_at: str
    size: int
    details: dict[str, Any]


class OllamaTags(Doc):
    models: list[OllamaModel]


class OllamaVersion(Doc):
    version: str


# ---- native and status --------------------------------------------------------------------------
class NativeMeta(Doc):
    id: str
    finish_reason: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class NativeOutput(Doc):
    text: str
    output_ids: list[int]
    meta_info: NativeMeta


NativeGenerateResponse = Union[NativeOutput, list[NativeOutput]]


class Health(Doc):
    status: Literal["ok"]


class HealthGenerate(Health):
    completion_tokens: int


class ModelInfo(Doc):
    model_path: str
    served_model_name: str
    context_len: int
    max_total_tokens: int
    max_running_requests: int
    components: dict[str, Any]


class ServerInfo(Doc):
    ready: bool
    healthy: bool
    requests_in_flight: int
    process_ids: dict[str, int]
    kv_used_tokens: int
    kv_total_tokens: int


class FlushCache(Doc):
    ok: bool
    message: str


class PluginsInfo(Doc):
    components: list[dict[str, Any]]
    plugins: list[dict[str, Any]]
    in_use: dict[str, Any]
