"""The streaming requests of `bench serving`: a lean HTTP/1.1 client on asyncio streams.

Time to first token is read at the client, so whatever the client spends between starting a request
and handing its first chunk over is counted as the server's. httpx (pure Python: httpx, httpcore,
anyio and h11 around each read and write) spent 1.5-2 ms of it per request on this project's CPU
machine, against ~0.3 ms for a plain socket. This client writes the request in one send on a
TCP_NODELAY connection and reads the response straight from the stream (status line, headers,
chunked or sized body), keeping connections alive in a pool. It speaks what `bench serving` needs:
POST of a JSON body, http or https, one response at a time per connection.
"""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
from contextlib import asynccontextmanager
from urllib.parse import urlsplit


class Response:
    """A response whose headers were read; its body is read with `aread` or `aiter_lines`."""

    def __init__(self, reader: asyncio.StreamReader, status_code: int, headers: dict[str, str]):
        self.reader, self.status_code, self.headers = reader, status_code, headers
        self.complete = False  # the whole body was read: the connection can carry another request

    async def aiter_bytes(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("the connection closed inside a chunked response body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await self.reader.readline()).strip():  # trailers, then the blank line
                        pass
                    break
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = await self.reader.read(min(left, 1 << 16))
                if not data:
                    raise ConnectionError("the connection closed inside the response body")
                left -= len(data)
                yield data
        else:  # the body ends with the connection
            while data := await self.reader.read(1 << 16):
                yield data
            return
        self.complete = True

    async def aread(self) -> bytes:
        return b"".join([data async for data in self.aiter_bytes()])

    async def aiter_lines(self):
        """The body's lines (without their line ends) as they arrive."""
        pending = ""
        async for data in self.aiter_bytes():
            pending += data.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line.rstrip("\r")
        if pending:
            yield pending


class StreamClient:
    """POST JSON to one server and read the streamed response; `close()` ends its connections."""

    def __init__(self, base_url: str):
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"base URL {base_url!r}: only http:// and https:// are supported")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connect(self, reuse: bool = True):
        """A connection, and whether it was kept alive from an earlier request."""
        while reuse and self.idle:
            reader, writer = self.idle.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer, False

    async def _send(self, request: bytes):
        """Write `request` and read the status line; a kept-alive connection the server closed
        meanwhile (its keep-alive timeout) answers nothing, and the request goes again on a new one."""
        for reuse in (True, False):
            reader, writer, reused = await self._connect(reuse)
            try:
                writer.write(request)
                status = await reader.readline()
            except ConnectionError:
                if not reused:
                    writer.close()
                    raise
                status = b""
            except BaseException:
                writer.close()
                raise
            if status or not reused:
                return reader, writer, status
            writer.close()

    @asynccontextmanager
    async def stream(self, path: str, payload: dict):
        """POST `payload` to `path`; yields the Response once its headers are read."""
        body = json.dumps(payload).encode()
        head = (f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        reader, writer, line = await self._send(head + body)
        response = None
        try:
            status = line.decode("latin-1").split(" ", 2)
            if len(status) < 2 or not status[1].isdigit():
                raise ConnectionError(f"not an HTTP response: {' '.join(status).strip()!r}")
            headers = {}
            while (line := (await reader.readline()).decode("latin-1").strip()):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            response = Response(reader, int(status[1]), headers)
            yield response
        finally:
            if response is not None and response.complete and headers.get("connection", "").lower() != "close":
                self.idle.append((reader, writer))
            else:
                writer.close()

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
