"""An upstream that counts how often each request really runs, for the Idempotency-Key tests.

Every request is counted per (Authorization, Idempotency-Key): `attempts` when it arrives,
`executions` when it succeeds, so a test can prove that duplicates never reached it. Query
parameters shape the answer: delay=<s> before answering, status=<code>, fail_first=<n> (500 for
the first n attempts of a key), size=<bytes> of body, chunked=1 (no Content-Length, several
chunks), stall=<s> between the head and the rest of a chunked body.
Run: python tests/support/idempotent_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
import uvicorn

if TYPE_CHECKING:
    from tests.support.processes import UpstreamProcess

_counts: dict[str, dict[str, int]] = defaultdict(lambda: {"attempts": 0, "executions": 0})


def _header(scope: dict[str, Any], name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == name), "")


async def _send_json(send: Any, payload: object, status: int = 200, extra: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
    body = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/_counts":
        await _send_json(send, _counts)
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    digest = hashlib.sha256()
    while True:
        message = await receive()
        digest.update(message.get("body", b""))
        if not message.get("more_body"):
            break
    counted = _counts[_header(scope, b"authorization") + "|" + _header(scope, b"idempotency-key")]
    counted["attempts"] += 1
    await asyncio.sleep(float(query.get("delay", "0")))
    if counted["attempts"] <= int(query.get("fail_first", "0")):
        await _send_json(send, {"error": "try again"}, status=500)
        return
    status = int(query.get("status", "200"))
    if status < 400:
        counted["executions"] += 1
    # A fresh token per execution: a replay is told from a second execution by it.
    token = uuid.uuid4().hex
    size = int(query.get("size", "0"))
    if "chunked" in query:
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-token", token.encode())]})
        await send({"type": "http.response.body", "body": b"a" * (size // 2), "more_body": True})
        await asyncio.sleep(float(query.get("stall", "0")))
        await send({"type": "http.response.body", "body": b"b" * (size - size // 2)})
        return
    payload = {"token": token, "body_sha256": digest.hexdigest(), "path": scope["path"], "padding": "x" * size}
    await _send_json(send, payload, status, [(b"x-token", token.encode()), (b"set-cookie", b"seen=1")])


def start_idempotent_upstream() -> UpstreamProcess:
    from tests.support.processes import start_support_server  # noqa: PLC0415

    return start_support_server(Path(__file__))


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
