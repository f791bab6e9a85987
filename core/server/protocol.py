"""Request bodies of every API, as pydantic models.

A field is accepted if and only if it is declared here: `Body` forbids extra fields, so a request
naming a parameter the server does not implement gets a 400 naming it (errors.py), on every route,
never a 200 that silently ignores it. A feature lands by declaring its fields in these models.
Declared fields without an effect are pure client metadata (OpenAI `user`, Anthropic `metadata` and
`cache_control`); docs/server.md lists them.

These models are the OpenAPI contract of the request bodies (openapi.py): every rule a body must
follow is declared here (types, ranges, non-empty lists, which fields exclude each other), so a
body the schema allows is one the server accepts. What no schema can say is left to the handlers:
a prompt that does not fit the context, a min_tokens above max_tokens, token ids at or past the
vocabulary size (`x-token-id`: openapi.py writes the served model's bound into /openapi.json).
Validation failures become HTTP 400 in the OpenAI error shape (errors.py). SamplingParams checks
the same ranges again, so one rule set holds for every API and for the offline engine.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar, Union

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from jackfield.sampling.constraint import ANY_JSON_OBJECT
from jackfield.sampling.params import MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS


def _integral(value):
    """JSON Schema's integers include 2.0; strict pydantic would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**constraints):
    """An int (2.0 included) with `Field` constraints; the constraints go first, so the schema has them."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]


Int = integer()
MAX_N = 64
Temperature = Annotated[float, Field(ge=0)]
TopP = Annotated[float, Field(gt=0, le=1)]
TopK = integer(ge=-1, description="-1 or 0: off")
Probability = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
Multiplier = Annotated[float, Field(gt=0)]
TokenCount = integer(ge=0)
TopLogprobs = integer(ge=0, le=MAX_TOP_LOGPROBS)
Choices = integer(ge=1, le=MAX_N)
NumPredict = integer(ge=-2, description="-1: no limit, -2: fill the context")
TokenId = integer(ge=0, json_schema_extra={"x-token-id": True})
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Text = Annotated[str, Field(min_length=1)]
PromptInput = Union[Text, Annotated[list[Text], Field(min_length=1)], TokenIds,
                    Annotated[list[TokenIds], Field(min_length=1)]]  # completion prompts, embedding inputs
TokenKey = Annotated[str, Field(pattern=r"^[0-9]+$", json_schema_extra={"x-token-id": True})]
LogitBias = dict[TokenKey, Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]]
Role = Literal["system", "user", "assistant", "developer", "tool"]
StopField = Union[Text, list[Text], None]
BackendName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
    "an installed grammar backend (GET /v1/plugins) for this request's constraint; default: the server's"))]
TIMEOUT_DOC = ("Seconds the request may take before it is aborted (HTTP 408); default and upper bound: the server's "
               "request_timeout")
T = TypeVar("T", bound=BaseModel)


def _off(field: str, why: str, off=lambda value: not value):
    """A BeforeValidator refusing a feature not implemented on this route unless `off(value)`; the
    schema then states the off values only (`false`/`null`, an empty list, `{"type": "disabled"}`)."""
    def check(value):
        if value is not None and not off(value):
            raise ValueError(f"{field} is not supported {why}")
        return value
    return BeforeValidator(check)


def _false_only(field: str, why: str):
    """`_off` for a boolean switch: only `false` or `null`. pydantic's Literal[False] alone takes 0 and
    0.0 (they compare equal to False), which the schema's `const: false` refuses."""
    def check(value):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{field} must be a boolean or null")
        return value
    return BeforeValidator(check), _off(field, why)


OLLAMA_OFF = ("on the Ollama API; tool calling and reasoning separation are on /v1/chat/completions and "
              "/v1/messages")


class Body(BaseModel):
    # strict: a value of another JSON type is refused (no "1" for 1, no 0 for false), as the schema says
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)


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

    model_config = ConfigDict(populate_by_name=True)  # extra fields stay forbidden (Body)
    name: str | None = None
    description: str | None = None
    schema_: Union[dict[str, Any], bool, None] = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    model_config = ConfigDict(json_schema_extra={  # type json_schema needs json_schema.schema
        "if": {"required": ["type"], "properties": {"type": {"const": "json_schema"}}},
        "then": {"required": ["json_schema"], "properties": {"json_schema": {
            "type": "object", "required": ["schema"], "properties": {"schema": {"type": ["object", "boolean"]}}}}}})
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class OpenAISampling(Body):
    """Fields shared by /v1/completions and /v1/chat/completions, with SGLang's extras."""

    model: str | None = None
    max_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Choices = 1
    stop: StopField = None
    seed: Int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)
    # SGLang extras
    top_k: TopK | None = None
    min_p: Probability | None = None
    repetition_penalty: Multiplier | None = None
    ignore_eos: bool = False
    min_tokens: TokenCount | None = None
    skip_special_tokens: bool = True
    stop_token_ids: list[TokenId] | None = None
    no_stop_trim: bool = False
    regex: Text | None = None
    ebnf: Text | None = None
    grammar_backend: BackendName | None = None
    lora_path: Any = None  # the LoRA adapter's name (SGLang); `model: "<model>:<adapter>"` works too
    speculative: bool | None = None  # False: no speculative decoding for this request

    def sampling_values(self) -> dict[str, Any]:
        """The SGLang-named sampling values (max_new_tokens is decided by the caller)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                "repetition_penalty": self.repetition_penalty, "frequency_penalty": self.frequency_penalty,
                "presence_penalty": self.presence_penalty, "logit_bias": self.logit_bias, "seed": self.seed,
                "stop": self.stop, "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos,
                "min_new_tokens": self.min_tokens, "skip_special_tokens": self.skip_special_tokens,
                "no_stop_trim": self.no_stop_trim, "n": self.n, "regex": self.regex, "ebnf": self.ebnf,
                "grammar_backend": self.grammar_backend, "speculative": self.speculative,
                **response_format_values(self.response_format)}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(Body):
    type: Literal["text"]
    text: str


class FunctionCall(Body):
    name: str
    arguments: str  # JSON text of the arguments object


class ToolCallItem(Body):
    """A call of an assistant message in the history."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body):
    role: Role
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None  # assistant messages
    tool_call_id: str | None = None               # tool messages: the call they answer


class FunctionDefinition(Body):
    name: Any = None         # checked by tools.check_tool, which names the offending tool
    description: str | None = None
    parameters: Any = None   # a JSON schema of the arguments object
    strict: bool | None = None


class ToolDefinition(Body):
    type: Any = "function"
    function: FunctionDefinition


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(OpenAISampling):
    model_config = ConfigDict(json_schema_extra={  # top_logprobs needs logprobs: true
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}})
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Union[Literal["auto", "required", "none"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True
    separate_reasoning: bool | None = None  # SGLang: reasoning_content apart (default: on for reasoning templates)


class CompletionRequest(OpenAISampling):
    model_config = ConfigDict(json_schema_extra={  # echo returns one choice per prompt: n 1, no best_of
        "if": {"required": ["echo"], "properties": {"echo": {"const": True}}},
        "then": {"properties": {"n": {"const": 1}, "best_of": {"type": "null"}}}})
    prompt: PromptInput = Field(description="A string, strings, token ids or lists of token ids")
    logprobs: TopLogprobs | None = None
    echo: bool = Field(False, description="the prompt before the completion (with logprobs: its tokens' logprobs)")
    best_of: Choices | None = Field(None, description="only best_of == n (no best-of selection beyond the n returned)")


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
    type: Literal["text", "tool_use", "tool_result"]
    text: str | None = None
    id: str | None = None            # tool_use
    name: str | None = None          # tool_use
    input: Any = None                # tool_use: the arguments object
    tool_use_id: str | None = None   # tool_result
    content: Any = None              # tool_result: a string or text blocks
    is_error: bool | None = None      # tool_result
    cache_control: dict[str, Any] | None = None  # accepted: the radix cache already reuses every prefix


class AnthropicMessage(Body):
    role: Literal["user", "assistant"]
    content: Union[str, list[ContentBlock]]


class AnthropicTool(Body):
    name: Any = None
    description: str | None = None
    input_schema: Any = None


class AnthropicToolChoice(Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingOff(Body):
    """Anthropic's `thinking`, accepted only disabled: extended thinking is not implemented."""

    type: Literal["disabled"]


class CountTokensRequest(Body):
    """POST /v1/messages/count_tokens."""

    model: str
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Union[str, list[ContentBlock], None] = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: Annotated[ThinkingOff | None, _off(
        "thinking", "on /v1/messages (a reasoning model's thinking stays in the text); /v1/chat/completions "
        "separates it as reasoning_content", lambda v: isinstance(v, dict) and v.get("type") == "disabled")] = None


class MessagesRequest(CountTokensRequest):
    max_tokens: TokenCount
    stop_sequences: list[Text] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)


# ---- Ollama -----------------------------------------------------------------------------------
class OllamaOptions(Body):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: Probability | None = None
    num_predict: NumPredict | None = None
    stop: StopField = None
    seed: Int | None = None
    repeat_penalty: Multiplier | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None


class OllamaMessage(Body):
    role: Role
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
    think: Annotated[Literal[False] | None, *_false_only("think", OLLAMA_OFF)] = Field(
        None, description="not supported: only false or null")


class OllamaChatRequest(Body):
    model: str
    messages: list[OllamaMessage] = Field(min_length=1)
    stream: bool = True
    format: OllamaFormat = None
    options: OllamaOptions = Field(default_factory=OllamaOptions)
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)
    think: Annotated[Literal[False] | None, *_false_only("think", OLLAMA_OFF)] = Field(
        None, description="not supported: only false or null")
    tools: Annotated[Annotated[list[dict[str, Any]], Field(max_length=0)] | None, _off("tools", OLLAMA_OFF)] = Field(
        None, description="not supported: only empty or null")


class OllamaEmbedRequest(Body):
    model: str
    input: Union[Text, Annotated[list[Text], Field(min_length=1)]]
    truncate: bool = True  # cut inputs to the context length instead of failing


class OllamaShowRequest(Body):
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["model"]}, {"required": ["name"]}]})
    model: str = Field(None, description="the model (or its older name `name`)")
    name: str = Field(None, description="the older name of `model`")


# ---- native -----------------------------------------------------------------------------------
class NativeSamplingParams(Body):
    """`sampling_params` of /generate: SGLang's names (jackfield.sampling.SamplingParams)."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: TokenCount | None = None
    min_new_tokens: TokenCount | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: Probability | None = None
    repetition_penalty: Multiplier | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    seed: Int | None = None
    stop: StopField = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool | None = None
    n: Choices | None = None
    skip_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    json_schema: Union[dict[str, Any], str, None] = Field(None, description="a JSON schema, or its JSON text")
    regex: Text | None = None
    ebnf: Text | None = None
    choices: Annotated[list[str], Field(min_length=1)] | None = Field(None, description="the output is one of these")
    grammar_backend: BackendName | None = None


class GenerateRequest(Body):
    """POST /generate, SGLang's native API: one prompt (`text` or `input_ids`) or a list of them."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["input_ids"]}]})
    text: Union[Text, Annotated[list[Text], Field(min_length=1)]] = Field(None, description="exclusive with input_ids")
    input_ids: Union[TokenIds, Annotated[list[TokenIds], Field(min_length=1)]] = Field(
        None, description="exclusive with text")
    sampling_params: NativeSamplingParams | None = None
    stream: bool = False
    return_logprob: bool = False
    top_logprobs_num: TopLogprobs = 0
    timeout: float | None = Field(None, gt=0, description=TIMEOUT_DOC)
    lora_path: Any = None   # a LoRA adapter's name, or a list with one name (or null) per prompt
    logprob_start_len: integer(ge=-1) = Field(
        -1, description=">= 0 (with return_logprob): input_token_logprobs from this position")
    return_text_in_logprobs: bool = True  # the token text as the third element of each logprob entry
