"""vLLM's tokenizer routes: POST /tokenize, POST /detokenize, GET /tokenizer_info.

`/tokenize` takes either a completion `prompt` or chat `messages` (the chat template applied as
/v1/chat/completions applies it, then tokenized without adding special tokens unless asked), and
answers vLLM's shape `{count, max_model_len, tokens, token_strs}`. lm-eval's `local-completions`
detects these routes (with /tokenizer_info) and uses the server's tokenizer through them.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from jackfield.server.app import ServerState, server_state
from jackfield.server.errors import APIError
from jackfield.server.prompts import chat_text, check_token_ids
from jackfield.server.protocol import Body, ChatMessage, TokenId
from jackfield.server.tool_prompt import openai_history, takes_tools

router = APIRouter()


class TokenizeRequest(Body):
    """Exactly one of `prompt` (completion) and `messages` (chat)."""

    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        # continue_final_message leaves the last message open: no generation prompt after it
        "if": {"required": ["continue_final_message"], "properties": {"continue_final_message": {"const": True}}},
        "then": {"required": ["add_generation_prompt"], "properties": {"add_generation_prompt": {"const": False}}}})
    model: str | None = None
    prompt: str = Field(None, description="exclusive with messages")
    messages: Annotated[list[ChatMessage], Field(min_length=1)] = Field(None, description="exclusive with prompt")
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (the template adds them)
    add_generation_prompt: bool = True      # chat: end with the assistant turn's header
    continue_final_message: bool = False    # chat: leave the last message open for the model to continue
    chat_template_kwargs: dict[str, Any] | None = None  # extra chat-template variables (enable_thinking, ...)
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(Body):
    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    tokenizer_class: str
    model_max_length: int
    vocab_size: int
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    chat_template: str | None = None


def _tokenizer(st: ServerState):
    if st.tokenizer is None:
        raise APIError(400, "this model has no tokenizer")
    return st.tokenizer


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    st = server_state(request)
    st.check_model(body.model)
    tok = _tokenizer(st)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of 'prompt' and 'messages'", param="prompt")
    if body.prompt is not None:
        ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
    else:
        if body.add_generation_prompt and body.continue_final_message:
            raise APIError(400, "add_generation_prompt and continue_final_message cannot both be true",
                           param="continue_final_message")
        tm = st.tokenizer_manager
        native = takes_tools(tok.chat_template)  # tool calls and results render as /v1/chat/completions renders them
        messages = openai_history(body.messages, native, st.parsers.tool(()) if st.parsers.tool is not None else None)
        text = chat_text(tm, messages, add_generation_prompt=body.add_generation_prompt,
                         continue_final_message=body.continue_final_message,
                         **(body.chat_template_kwargs or {}))
        ids = tok.encode(text, add_special_tokens=bool(body.add_special_tokens))
    strs = tok.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=st.info.context_len, tokens=ids, token_strs=strs)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    st = server_state(request)
    st.check_model(body.model)
    tok = _tokenizer(st)
    if body.tokens:
        check_token_ids(body.tokens, st.tokenizer_manager.vocab_size, "tokens")
    return DetokenizeResponse(prompt=tok.decode(body.tokens, skip_special_tokens=False))


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> TokenizerInfo:
    st = server_state(request)
    tok = _tokenizer(st)
    special = tok.special_tokens
    return TokenizerInfo(tokenizer_class=type(tok).__name__, model_max_length=st.info.context_len,
                         vocab_size=tok.vocab_size, chat_template=tok.chat_template,
                         **{name: special.get(name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")})
