"""A real upstream for the integration tests: a small ASGI app served by uvicorn in its own process.

Each endpoint exists to show one forwarding behaviour from the upstream's side of the wire.
Run: python tests/support/upstream_app.py PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

Scope = dict[str, Any]


async def _read_body(receive: Any) -> tuple[int, str, list[int]]:
    digest = hashlib.sha256()
    size = 0
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body = message.get("body", b"")
        digest.update(body)
        size += len(body)
        chunks.append(len(body))
        if not message.get("more_body"):
            break
    return size, digest.hexdigest(), chunks


def _query(scope: Scope) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def _respond(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Any, payload: object, status: int = 200, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await _respond(send, status, headers + (extra or []), body)


async def app(scope: Scope, receive: Any, send: Any) -> None:  # noqa: PLR0912 - one branch per endpoint
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = _query(scope)

    if path.startswith("/echo") or path == "/":
        size, digest, _ = await _read_body(receive)
        await _json(
            send,
            {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
                "body_size": size,
                "body_sha256": digest,
                "client": scope["client"][0],
            },
        )
    elif path == "/sse":
        count, interval = int(query.get("n", "3")), float(query.get("interval", "0.3"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        for index in range(count):
            await send({"type": "http.response.body", "body": b"data: event %d\n\n" % index, "more_body": True})
            await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/download":
        size = int(query.get("size", "1048576"))
        chunk = b"x" * 65536
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())],
            }
        )
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
    elif path.startswith("/status/"):
        status = int(path.rsplit("/", 1)[1])
        headers = [(b"etag", b'"v1"')]
        if status in (204, 304):
            await _respond(send, status, headers)
        else:
            await _json(send, {"status": status}, status=status, extra=headers)
    elif path == "/cookies":
        await _json(send, {}, extra=[(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/")])
    elif path == "/hop-by-hop":
        await _json(
            send,
            {},
            extra=[
                (b"connection", b"x-upstream-private"),
                (b"x-upstream-private", b"secret"),
                (b"keep-alive", b"timeout=5"),
                (b"x-end-to-end", b"kept"),
            ],
        )
    elif path == "/redirect":
        await _respond(send, 302, [(b"location", b"/echo?redirected=1"), (b"content-length", b"0")])
    elif path == "/slow":
        await asyncio.sleep(float(query.get("delay", "2")))
        await _json(send, {"slow": True})
    elif path == "/payload":
        # A configurable response: size bytes of repetitive JSON-ish text (or random bytes with
        # random=1), a media type, extra headers (h=name:value), chunked when chunked=1.
        size = int(query.get("size", "4096"))
        body = (
            random.Random(size).randbytes(size)
            if query.get("random")
            else (b'{"item":"compressible value"},' * (size // 30 + 1))[:size]
        )
        headers = [(b"content-type", query.get("type", "application/json").encode())]
        for pair in parse_qs(scope["query_string"].decode("latin-1")).get("h", []):
            name, _, value = pair.partition(":")
            headers.append((name.strip().lower().encode(), value.strip().encode()))
        status = int(query.get("status", "200"))
        if query.get("chunked"):
            await send({"type": "http.response.start", "status": status, "headers": headers})
            for start in range(0, size, 10000):
                await send({"type": "http.response.body", "body": body[start : start + 10000], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            headers.append((b"content-length", str(size).encode()))
            await _respond(send, status, headers, body)
    elif path == "/chunked":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for piece in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _json(send, {"error": "not found"}, status=404)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="httptools")
