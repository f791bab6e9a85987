"""The bench's streaming HTTP client (jackfield.bench.http_stream) against canned raw responses:
chunked and sized bodies, lines split across chunks, kept-alive connections reused, closed ones not."""
from __future__ import annotations

import asyncio
import json

import pytest

from jackfield.bench.http_stream import StreamClient


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def run_against(responses: list[bytes], work):
    """Serve `responses` in order (one per request, over whatever connections come) and run
    `work(client)`; returns its result, the request bodies received and the connections opened."""
    seen, conns = [], []

    async def handle(reader, writer):
        conns.append(writer)
        while responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
            seen.append(json.loads(await reader.readexactly(length)))
            reply = responses.pop(0)
            writer.write(reply)
            await writer.drain()
            if b"Connection: close" in reply or b"x-then-drop: 1" in reply:  # the latter: a keep-alive timeout
                break
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        client = StreamClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        try:
            return await work(client)
        finally:
            await client.close()
            server.close()

    return asyncio.run(main()), seen, conns


SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def test_lines_of_a_chunked_stream_and_the_connection_is_reused():
    first = SSE + chunked(b'data: {"a": 1}\n\nda', b'ta: {"b": 2}\r\n\r\n', b"data: [DONE]\n\n")
    second = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n" + b"data: last\n\n"

    async def work(client):
        out = []
        for i in range(2):
            async with client.stream("/v1/completions", {"i": i}) as resp:
                assert resp.status_code == 200
                out.append([line async for line in resp.aiter_lines() if line])
        return out

    out, seen, conns = run_against([first, second], work)
    assert out == [['data: {"a": 1}', 'data: {"b": 2}', "data: [DONE]"], ["data: last"]]
    assert seen == [{"i": 0}, {"i": 1}] and len(conns) == 1


def test_an_error_body_and_a_closed_connection_is_not_reused():
    error = b'HTTP/1.1 400 Bad Request\r\ncontent-length: 15\r\nConnection: close\r\n\r\n{"error": "no"}'
    ok = SSE + chunked(b"data: x\n\n")

    async def work(client):
        async with client.stream("/v1/completions", {}) as resp:
            status, body = resp.status_code, await resp.aread()
        async with client.stream("/v1/completions", {}) as resp:
            return status, body, [line async for line in resp.aiter_lines() if line]

    (status, body, lines), _, conns = run_against([error, ok], work)
    assert (status, body, lines) == (400, b'{"error": "no"}', ["data: x"]) and len(conns) == 2


def test_a_stream_left_early_closes_its_connection():
    async def work(client):
        async with client.stream("/v1/completions", {}) as resp:
            async for line in resp.aiter_lines():
                break
        return client.idle

    idle, _, _ = run_against([SSE + chunked(b"data: 1\n\n", b"data: 2\n\n")], work)
    assert idle == []


def test_only_http_urls():
    with pytest.raises(ValueError, match="only http"):
        StreamClient("ftp://example.com")


def test_a_kept_alive_connection_the_server_dropped_is_replaced():
    dropped = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-then-drop: 1\r\n\r\nabc"

    async def work(client):
        bodies = []
        for _ in range(2):
            async with client.stream("/v1/completions", {}) as resp:
                bodies.append(await resp.aread())
            await asyncio.sleep(0.05)  # the server closes the first connection meanwhile
        return bodies

    bodies, seen, conns = run_against([dropped, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], work)
    assert bodies == [b"abc", b"ok"] and len(seen) == 2 and len(conns) == 2


def test_a_chunked_body_cut_off_is_an_error_not_an_end():
    cut = SSE + b"9\r\ndata: 1\n\n\r\n"  # one chunk, then the connection closes without the last chunk

    async def work(client):
        lines = []
        with pytest.raises(ConnectionError, match="inside a chunked response body"):
            async with client.stream("/v1/completions", {}) as resp:
                async for line in resp.aiter_lines():
                    lines.append(line)
        return lines, client.idle

    (lines, idle), _, _ = run_against([cut], work)
    assert lines == ["data: 1", ""] and idle == []
