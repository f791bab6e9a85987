"""OpenAI embeddings: POST /v1/embeddings, for embedding models and generative models alike.

Each input becomes a prefill-only request through the scheduler (`TokenizedEmbeddingReq`): its
final hidden states are pooled as the model is served (`EngineInfo.embedding`: last token unless a
sentence-transformers config or `--embedding-pooling` says mean) and L2-normalized unless
`--no-embedding-normalize` (or the model's config) says otherwise. No token is decoded and the
request's KV is released (and cached as a prefix) like any finished request's.
"""
from __future__ import annotations

import base64
from typing import Literal, Union

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from jackfield.embedding import normalized
from jackfield.server.app import ServerState, server_state
from jackfield.server.errors import APIError
from jackfield.server.generation import RequestGroup, Result, request_priority, until_disconnected
from jackfield.server.prompts import completion_prompts, max_new_tokens
from jackfield.server.protocol import Body, PromptInput, integer

router = APIRouter()


class EmbeddingRequest(Body):
    input: PromptInput = Field(description="A string, strings, token ids or lists of token ids")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: integer(ge=1) | None = Field(None, description="only the model's own width: no Matryoshka truncation")
    user: str | None = None        # client metadata, unused


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: Union[list[float], str]  # base64: float32 little-endian bytes
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


async def run_embeddings(st: ServerState, request: Request, prompts: list[list[int]], param: str) -> list[Result]:
    """Pool every prompt through the scheduler; one Result with `embedding` (not normalized) per prompt."""
    tm = st.tokenizer_manager
    max_new_tokens(0, prompts, tm.context_len, lambda _: 0, "max_tokens", param)  # each prompt fits the context
    group = RequestGroup(tm, prompts, None, pooling=st.info.embedding.pooling, priority=request_priority(request))
    with group:
        return await until_disconnected(request, group.collect())


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    st = server_state(request)
    st.check_model(body.model)
    width = st.info.model_config.hidden_size
    if body.dimensions is not None and body.dimensions != width:
        raise APIError(400, f"dimensions {body.dimensions} is not supported: this model's embeddings have "
                            f"{width} dimensions", param="dimensions")
    prompts = completion_prompts(st.tokenizer_manager, body.input, "input")
    results = await run_embeddings(st, request, prompts, "input")
    data = []
    for i, r in enumerate(results):
        vec = normalized(r.embedding) if st.info.embedding.normalize else r.embedding
        if body.encoding_format == "base64":
            vec = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
        data.append(EmbeddingData(embedding=vec, index=i))
    tokens = sum(len(p) for p in prompts)
    return EmbeddingResponse(data=data, model=st.model_name, usage=EmbeddingUsage(prompt_tokens=tokens,
                                                                                   total_tokens=tokens))
