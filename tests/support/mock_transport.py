"""An in-process upstream transport (httpx's MockTransport idea): the forwarder and the guard
chain run for real, and a handler function plays the upstream. Every request it was sent is
kept, with its body, so a test can assert what reached the "upstream" byte for byte."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from guardproxy.asgi import Headers
from guardproxy.proxy.errors import UpstreamError
from guardproxy.proxy.transport import UpstreamRequest


@dataclass
class MockResponse:
    """What the mock upstream answers: a status, fields, and the body in the chunks it arrives
    in. `fail_after` raises that error once those chunks are out (an upstream dying mid-body)."""

    status: int = 200
    headers: Headers = field(default_factory=lambda: [(b"content-type", b"application/json")])
    chunks: Sequence[bytes] = (b'{"ok":true}',)
    fail_after: UpstreamError | None = None
    # Trailer fields of a chunked body, handed out once the body is finished.
    trailers: Headers = field(default_factory=list)
    closed: bool = False
    _next: int = 0

    @property
    def finished(self) -> bool:
        return self._next >= len(self.chunks) and self.fail_after is None

    @property
    def chunk_ready(self) -> bool:
        return False  # as a real response whose body is still on its way: the head leaves first

    async def read_chunk(self) -> bytes:
        if self._next < len(self.chunks):
            self._next += 1
            return self.chunks[self._next - 1]
        if self.fail_after is not None:
            raise self.fail_after
        return b""

    def close(self) -> None:
        self.closed = True


@dataclass
class GatedResponse(MockResponse):
    """A response whose body waits until the test sets `gate` (a slow upstream)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_chunk(self) -> bytes:
        await self.gate.wait()
        return await super().read_chunk()


@dataclass
class SentRequest:
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    content_length: int | None

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return values[0] if values else None


Handler = Callable[[SentRequest], MockResponse]


class MockTransport:
    """An `UpstreamTransport` whose answers come from `handler`; a handler may raise an
    `UpstreamError` to play a refused connection or a timeout."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or (lambda request: MockResponse())
        self.sent: list[SentRequest] = []
        self.responses: list[MockResponse] = []
        self.closed = False

    async def send(self, request: UpstreamRequest) -> MockResponse:
        body = b""
        if request.body is not None:
            async for chunk in request.body:
                body += chunk
        sent = SentRequest(request.method, request.target, list(request.headers), body, request.content_length)
        self.sent.append(sent)
        response = self.handler(sent)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        self.closed = True
