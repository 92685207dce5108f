"""A real WebSocket upstream for the tunnel tests: a small ASGI app served by uvicorn with its
`websockets` backend, in its own process. Run: python tests/support/ws_upstream.py PORT

  /echo            echoes every message, text as text and binary as binary
  /close?code=N    accepts, then closes with code N and reason "bye"
  /headers         accepts and sends the handshake's request fields as one JSON text message
  /flood?mib=N     accepts and sends N MiB in 64 KiB binary messages, as fast as it may
  /sink            accepts and never reads again (an upstream that stops reading)
  /quiet           accepts and does nothing (for idle timeouts)
  /reject          refuses the handshake (uvicorn answers 403)
  anything else    a plain HTTP 200 with a small JSON body
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

Scope = dict[str, Any]
CHUNK = 64 * 1024


async def _websocket(scope: Scope, receive: Any, send: Any) -> None:
    path = scope["path"]
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    message = await receive()
    assert message["type"] == "websocket.connect"
    if path == "/reject":
        await send({"type": "websocket.close", "code": 1008})
        return
    subprotocols = scope.get("subprotocols") or []
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if "chat" in subprotocols:
        accept["subprotocol"] = "chat"
    await send(accept)
    if path == "/close":
        await send({"type": "websocket.close", "code": int(query.get("code", "1000")), "reason": "bye"})
        return
    if path == "/headers":
        fields = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in scope["headers"]]
        await send({"type": "websocket.send", "text": orjson.dumps(fields).decode()})
    elif path == "/flood":
        block = b"\x5a" * CHUNK
        for _ in range(int(float(query.get("mib", "1")) * 1024 * 1024) // CHUNK):
            await send({"type": "websocket.send", "bytes": block})
    elif path in ("/sink", "/quiet"):
        await asyncio.sleep(3600)
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] == "http":
        body = orjson.dumps({"path": scope["path"], "plain": True})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    # The backend the tests were asked to use; its deprecation notice is noise in their output.
    warnings.filterwarnings("ignore", message=".*implementation is deprecated")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        ws="websockets",
        lifespan="off",
        log_level="warning",
        ws_max_size=32 * 1024 * 1024,
        ws_ping_interval=None,
    )
