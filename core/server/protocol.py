"""Request bodies of every API, as pydantic models. Unknown fields are accepted and ignored.

Validation failures become HTTP 400 in the OpenAI error shape (errors.py). Values are range-checked
later by SamplingParams, so one rule set holds for every API.
"""
from __future__ import annotations

import json
from typing import Any, Literal, TypeVar, Union

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jackfield.sampling.constraint import ANY_JSON_OBJECT

StopField = Union[str, list[str], None]
TIMEOUT_DOC = "Seconds the request may take before it is aborted (HTTP 408); default: the server's request_timeout"
T = TypeVar("T", bound=BaseModel)


class Body(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


async def json_body(request: Request, model: type[T]) -> T:
    """Parse the body as JSON whatever its content type (Ollama clients and `curl -d` omit it)."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error",
                                       "ctx": {"error": str(exc)}}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


# ---- OpenAI -----------------------------------------------------------------------------------
class StreamOptions(Body):
    include_usage: bool = False


class JSONSchemaFormat(Body):
    """OpenAI's response_format.json_schema: the schema under `schema`, named, optionally strict."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True)
    name: str | None = None
    description: str | None = None
    schema_: Union[dict[str, Any], bool, None] = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class OpenAISampling(Body):
    """Fields shared by /v1/completions and /v1/chat/completions, with SGLang's extras."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: StopField = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)
    # SGLang extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int | None = None
    skip_special_tokens: bool = True
    stop_token_ids: list[int] | None = None
    no_stop_trim: bool = False
    regex: str | None = None
    ebnf: str | None = None
    grammar_backend: str | None = None

    def sampling_values(self) -> dict[str, Any]:
        """The SGLang-named sampling values (max_new_tokens is decided by the caller)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                "repetition_penalty": self.repetition_penalty, "frequency_penalty": self.frequency_penalty,
                "presence_penalty": self.presence_penalty, "logit_bias": self.logit_bias, "seed": self.seed,
                "stop": self.stop, "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos,
                "min_new_tokens": self.min_tokens, "skip_special_tokens": self.skip_special_tokens,
                "no_stop_trim": self.no_stop_trim, "n": self.n, "regex": self.regex, "ebnf": self.ebnf,
                "grammar_backend": self.grammar_backend, **response_format_values(self.response_format)}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessage(Body):
    role: str
    content: Any = None  # a string or a list of text parts; checked by prompts.content_text
    name: str | None = None


class ChatCompletionRequest(OpenAISampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(OpenAISampling):
    prompt: Any  # a string, strings, token ids or lists of token ids; checked by prompts.completion_prompts
    logprobs: int | None = None
    echo: bool = False


def response_format_values(rf: ResponseFormat | None) -> dict[str, Any]:
    """OpenAI's response_format as the json_schema sampling value (the constraint is enforced
    whether or not `strict` is set)."""
    if rf is None or rf.type == "text":
        return {}
    if rf.type == "json_object":
        return {"json_schema": ANY_JSON_OBJECT}
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        from jackfield.server.errors import APIError

        raise APIError(400, "response_format of type json_schema needs json_schema.schema",
                       param="response_format.json_schema.schema")
    return {"json_schema": rf.json_schema.schema_}


def ollama_format_values(fmt: OllamaFormat) -> dict[str, Any]:
    """Ollama's `format`: "json" is any JSON object, an object is a JSON schema."""
    if not fmt:
        return {}
    return {"json_schema": ANY_JSON_OBJECT if fmt == "json" else fmt}


# ---- Anthropic --------------------------------------------------------------------------------
class ContentBlock(Body):
    type: str
    text: str | None = None


class AnthropicMessage(Body):
    role: Literal["user", "assistant"]
    content: Union[str, list[ContentBlock]]


class MessagesRequest(Body):
    model: str
    max_tokens: int
    messages: list[AnthropicMessage]
    system: Union[str, list[ContentBlock], None] = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


# ---- Ollama -----------------------------------------------------------------------------------
class OllamaOptions(Body):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None
    stop: StopField = None
    seed: int | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class OllamaMessage(Body):
    role: str
    content: str = ""


OllamaFormat = Union[Literal["", "json"], dict[str, Any], None]  # "json": any JSON object; an object: a schema


class OllamaGenerateRequest(Body):
    model: str
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    stream: bool = True
    format: OllamaFormat = None
    options: OllamaOptions = Field(default_factory=OllamaOptions)
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


class OllamaChatRequest(Body):
    model: str
    messages: list[OllamaMessage]
    stream: bool = True
    format: OllamaFormat = None
    options: OllamaOptions = Field(default_factory=OllamaOptions)
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


# ---- native -----------------------------------------------------------------------------------
class GenerateRequest(Body):
    """POST /generate, SGLang's native API: one prompt (`text` or `input_ids`) or a list of them."""

    text: Any = None        # a string or a list of strings
    input_ids: Any = None   # token ids or a list of token-id lists
    sampling_params: dict[str, Any] | None = None
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: int = 0
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)
