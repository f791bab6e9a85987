"""OpenAI Files and Batch APIs: /v1/files (upload, list, retrieve, content, delete) and /v1/batches
(create, list, retrieve, cancel). Files live in a FileStore (`--file-storage-dir`, at most
`--max-upload-bytes` each); batches run in a BatchRunner through the server's own routes at low
priority (batch_runner.py). The official `openai` client's `files.*` and `batches.*` calls work
unchanged.
"""
from __future__ import annotations

from typing import Generic, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest

from jackfield.server.app import server_state
from jackfield.server.batch_runner import Batch
from jackfield.server.openapi import error_responses
from jackfield.server.errors import APIError
from jackfield.server.file_store import FileObject
from jackfield.server.protocol import Body

router = APIRouter()
UPLOAD_FIELDS = {"file", "purpose"}
MULTIPART_SLACK = 64 << 10  # form boundaries and headers around the file's bytes
UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "additionalProperties": False,
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]}}}}}}}


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


T = TypeVar("T")


class CursorPage(BaseModel, Generic[T]):
    """One page of an OpenAI list: newest first; the next page starts `after` last_id."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class CreateBatchRequest(Body):
    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]  # batch_runner.ENDPOINTS
    completion_window: Literal["24h"]  # batch_runner.WINDOW_S
    metadata: dict[str, str] | None = None  # client metadata, returned with the batch


def _page(items: list, limit: int, after: str | None) -> dict:
    """One page of `items` (newest first) after the item with id `after`, as OpenAI's cursor lists."""
    if after is not None:
        ids = [i.id for i in items]
        if after not in ids:
            raise APIError(404, f"no item with id '{after}' to list after", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"data": page, "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
            "has_more": len(items) > limit}


# ---- files --------------------------------------------------------------------------------------
@router.post("/v1/files", openapi_extra=UPLOAD_SCHEMA)
async def upload_file(request: Request) -> FileObject:
    """multipart/form-data with `file` and `purpose` ("batch")."""
    store = server_state(request).files
    limit = store.max_bytes + MULTIPART_SLACK
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the upload is larger than the server's limit of {store.max_bytes} bytes "
                            f"(--max-upload-bytes)", param="file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError(400, "upload the file as multipart/form-data with the fields 'file' and 'purpose'", param="file")
    form = await _limited(request, limit).form(max_files=1, max_fields=len(UPLOAD_FIELDS))
    try:
        unknown = sorted(set(form.keys()) - UPLOAD_FIELDS)
        if unknown:
            raise APIError(400, f"unsupported parameter: '{unknown[0]}' is not implemented by this server",
                           param=unknown[0])
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "missing required parameter: 'file'", param="file")
        if purpose != "batch":
            raise APIError(400, f"purpose must be 'batch' (the only one this server implements), got {purpose!r}",
                           param="purpose")
        return await store.save_stream(_chunks(upload), upload.filename or "upload.jsonl", purpose)
    finally:
        await form.close()


def _limited(request: Request, limit: int) -> StarletteRequest:
    """`request` whose body stream raises 413 past `limit` bytes (for uploads without Content-Length)."""
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise APIError(413, f"the upload is larger than the server's limit of {limit - MULTIPART_SLACK} bytes "
                                f"(--max-upload-bytes)", param="file")
        return message

    return StarletteRequest(request.scope, receive)


async def _chunks(upload: UploadFile, size: int = 1 << 20):
    while chunk := await upload.read(size):
        yield chunk


@router.get("/v1/files", responses=error_responses(404))
async def list_files(request: Request, purpose: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                     after: str | None = None, order: Literal["asc", "desc"] = "desc") -> CursorPage[FileObject]:
    files = server_state(request).files.list(purpose)
    return CursorPage[FileObject](**_page(files if order == "desc" else files[::-1], limit, after))


@router.get("/v1/files/{file_id}", responses=error_responses(404))
async def retrieve_file(file_id: str, request: Request) -> FileObject:
    return server_state(request).files.get(file_id)


@router.get("/v1/files/{file_id}/content", responses={
    **error_responses(404), 200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}})
async def file_content(file_id: str, request: Request) -> Response:
    return Response(server_state(request).files.content(file_id), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", responses=error_responses(404))
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    server_state(request).files.delete(file_id)
    return FileDeleted(id=file_id)


# ---- batches ------------------------------------------------------------------------------------
@router.post("/v1/batches", responses=error_responses(404))
async def create_batch(body: CreateBatchRequest, request: Request) -> Batch:
    return server_state(request).batches.create(body.input_file_id, body.endpoint, body.completion_window,
                                                body.metadata)


@router.get("/v1/batches", responses=error_responses(404))
async def list_batches(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None) -> CursorPage[Batch]:
    return CursorPage[Batch](**_page(server_state(request).batches.list(), limit, after))


@router.get("/v1/batches/{batch_id}", responses=error_responses(404))
async def retrieve_batch(batch_id: str, request: Request) -> Batch:
    return server_state(request).batches.get(batch_id)


@router.post("/v1/batches/{batch_id}/cancel", responses=error_responses(404))
async def cancel_batch(batch_id: str, request: Request) -> Batch:
    return server_state(request).batches.cancel(batch_id)
