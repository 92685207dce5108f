"""A deliberately weak API for the audit tests: every checklist gap the audit probes for, on
purpose. Run: python tests/support/weak_upstream.py PORT

It reflects any Origin (even `null`) with credentials and answers every preflight, echoes TRACE,
sends Server/X-Powered-By banners and HSTS over plain HTTP, has no request ID, renders 404s and
500s as text/html with a traceback, a source path and an internal address, has no rate limit and
no body limit (it reads whatever is declared), resolves encoded dot-segments, builds links and
redirects from the Host header, sets no Cache-Control, echoes X-Forwarded-For as the client
address, and never compresses.
"""

from __future__ import annotations

import posixpath
import sys
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson
import uvicorn

Scope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]

BANNERS: Headers = [
    (b"server", b"WeakServer/1.4.2 (Ubuntu)"),
    (b"x-powered-by", b"PHP/7.4.3"),
    # RFC 6797 §7.2 says never over plain HTTP; a weak app sends it anyway.
    (b"strict-transport-security", b"max-age=31536000"),
]

TRACEBACK = """<html><body><h1>{title}</h1><pre>
Traceback (most recent call last):
  File "/srv/app/views.py", line 42, in dispatch
    return handlers[path](request)
KeyError: '{path}'
database: postgres://10.0.3.7:5432/app
</pre></body></html>"""


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _cors(headers: dict[str, str]) -> Headers:
    origin = headers.get("origin")
    if origin is None:
        return []
    # Reflect whatever asked, with credentials: the classic CORS hole.
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"access-control-allow-credentials", b"true")]


async def _drain(receive: Any) -> None:
    """Read the whole body, however large it was declared: no body limit at all."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


async def _send(send: Any, status: int, headers: Headers, body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await _drain(receive)
    headers = _headers(scope)
    host = headers.get("host", "localhost")
    common = BANNERS + _cors(headers)
    method = scope["method"]
    if method == "TRACE":
        lines = [f"TRACE {scope['raw_path'].decode('latin-1')} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
        await _send(send, 200, [*common, (b"content-type", b"message/http")], "\r\n".join(lines).encode("latin-1"))
        return
    if method == "OPTIONS":
        allow = [
            (b"access-control-allow-methods", b"*"),
            (b"access-control-allow-headers", headers.get("access-control-request-headers", "*").encode("latin-1")),
        ]
        await _send(send, 200, [*common, *allow], b"")
        return
    try:
        # Strict decoding, unguarded: undecodable percent-escapes end in an unhandled exception.
        path = unquote_to_bytes(scope["raw_path"].decode("latin-1")).decode("utf-8")
        # Dot-segments resolved after decoding, as naive file and route lookups do.
        path = posixpath.normpath(path) if path != "/" else path
    except UnicodeDecodeError:
        body = TRACEBACK.format(title="500 Internal Server Error", path="?").encode()
        await _send(send, 500, [*common, (b"content-type", b"text/html")], body)
        return
    if path == "/docs":
        await _send(send, 302, [*common, (b"location", f"http://{host}/docs/".encode("latin-1"))], b"")
        return
    if path != "/":
        body = TRACEBACK.format(title="404 Not Found", path=path.replace("<", "")).encode()
        await _send(send, 404, [*common, (b"content-type", b"text/html")], body)
        return
    payload = {
        "self": f"http://{host}/",
        "docs": f"http://{host}/docs",
        # "Who am I": the address a naive app believes, from the first X-Forwarded-For entry.
        "client": headers.get("x-forwarded-for", scope["client"][0]).split(",")[0].strip(),
        "request_headers": headers,
        "items": [
            {"id": index, "name": f"item {index}", "description": "a compressible API value"} for index in range(30)
        ],
    }
    await _send(send, 200, [*common, (b"content-type", b"application/json")], orjson.dumps(payload))


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="httptools", server_header=False
    )
