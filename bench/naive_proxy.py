"""The naive baseline: the reverse proxy most people would write first (Starlette + httpx).

Run: python bench/naive_proxy.py UPSTREAM_URL PORT
"""

from __future__ import annotations

import sys

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

UPSTREAM = sys.argv[1]
client = httpx.AsyncClient(base_url=UPSTREAM, limits=httpx.Limits(max_connections=1000))
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


async def proxy(request: Request) -> StreamingResponse:
    upstream_request = client.build_request(
        request.method,
        request.url.path,
        params=request.url.query,
        headers=[(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP],
        content=request.stream(),
    )
    response = await client.send(upstream_request, stream=True)
    return StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        headers={k: v for k, v in response.headers.items() if k not in HOP_BY_HOP},
        background=BackgroundTask(response.aclose),
    )


app = Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", http="httptools", loop="uvloop")
