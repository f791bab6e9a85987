"""FileStore: the files of the OpenAI Files API (/v1/files), on disk under one directory.

Each file is two entries: `<id>.data` (the bytes) and `<id>.json` (its FileObject). Both are
written to a temporary name and renamed into place, so a crash never leaves a half file listed;
files survive a server restart. Uploads are copied chunk by chunk and refused with 413 as soon as
they pass `max_bytes`.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import AsyncIterator, Literal

from pydantic import BaseModel

from jackfield.server.errors import APIError

PURPOSES = ("batch", "batch_output")  # what clients upload / what batches write


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"


class FileStore:
    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.dir = Path(directory).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def _data(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.data"

    def _meta(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.json"

    async def save_stream(self, chunks: AsyncIterator[bytes], filename: str, purpose: str) -> FileObject:
        """Store an upload; 413 (nothing kept) once it passes `max_bytes`."""
        file_id = f"file-{uuid.uuid4().hex}"
        tmp = self.dir / f".{file_id}.part"
        size = 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise APIError(413, f"the file is larger than the server's limit of {self.max_bytes} bytes "
                                            f"(--max-upload-bytes)", param="file")
                    out.write(chunk)
            return self._publish(file_id, tmp, size, filename, purpose)
        finally:
            tmp.unlink(missing_ok=True)

    def save_bytes(self, data: bytes, filename: str, purpose: str) -> FileObject:
        """Store a file the server made (a batch's output or error file); not size-limited."""
        file_id = f"file-{uuid.uuid4().hex}"
        tmp = self.dir / f".{file_id}.part"
        tmp.write_bytes(data)
        return self._publish(file_id, tmp, len(data), filename, purpose)

    def _publish(self, file_id: str, tmp: Path, size: int, filename: str, purpose: str) -> FileObject:
        obj = FileObject(id=file_id, bytes=size, created_at=int(time.time()), filename=filename, purpose=purpose)
        os.replace(tmp, self._data(file_id))
        meta_tmp = self.dir / f".{file_id}.json.part"
        meta_tmp.write_text(obj.model_dump_json())
        os.replace(meta_tmp, self._meta(file_id))
        return obj

    def get(self, file_id: str) -> FileObject:
        """The file's object; 404 for an unknown id."""
        meta = self._meta(file_id) if _valid_id(file_id) else None
        if meta is None or not meta.is_file():
            raise APIError(404, f"no file with id '{file_id}'", param="file_id", code="file_not_found")
        return FileObject.model_validate_json(meta.read_text())

    def content(self, file_id: str) -> bytes:
        self.get(file_id)
        return self._data(file_id).read_bytes()

    def delete(self, file_id: str) -> None:
        self.get(file_id)
        self._meta(file_id).unlink(missing_ok=True)
        self._data(file_id).unlink(missing_ok=True)

    def list(self, purpose: str | None = None) -> list[FileObject]:
        """Every file (of `purpose`), newest first."""
        objs = []
        for meta in self.dir.glob("file-*.json"):
            try:
                obj = FileObject.model_validate_json(meta.read_text())
            except (OSError, ValueError):
                continue  # deleted meanwhile
            if purpose is None or obj.purpose == purpose:
                objs.append(obj)
        return sorted(objs, key=lambda o: (o.created_at, o.id), reverse=True)


def _valid_id(file_id: str) -> bool:
    """Ids are `file-<hex>`: nothing else may reach the file system."""
    return file_id.startswith("file-") and file_id[5:].isalnum()


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()
