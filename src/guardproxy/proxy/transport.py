"""The narrow interface between the forwarder and whatever carries bytes to the upstream.

The forwarder only knows `UpstreamTransport`: the keep-alive pool implements it for real traffic,
and a test can put any other implementation in its place (as httpx separates its transports).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from guardproxy.asgi import Headers


@dataclass(slots=True)
class UpstreamRequest:
    method: bytes
    # The request target exactly as the client sent it: raw path and raw query, never re-encoded.
    target: bytes
    headers: Headers
    # None when the request has no body; otherwise the body's chunks as they arrive.
    body: AsyncIterator[bytes] | None
    # Content-Length when the client declared one; a body without it is sent chunked.
    content_length: int | None
    connect_timeout: float
    read_timeout: float
    # The route's name: a transport that retries (proxy/resilient.py) keeps its policy by it.
    route: str = "default"
    # Written by the transport: attempts made, and the endpoint that took the last one.
    attempts: int = 1
    endpoint: str = ""
    # Connection: upgrade is sent on purpose: a 101 ends the exchange (the response's `switch`).
    upgrade: bool = False

    # Written out, not generated: the dataclasses module's __init__ runs as interpreted code
    # even in the compiled build (setup.py), one call per request. Positional like the generated one.
    def __init__(  # noqa: PLR0917
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
        connect_timeout: float,
        read_timeout: float,
        route: str = "default",
        attempts: int = 1,
        endpoint: str = "",
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.content_length = content_length
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.route = route
        self.attempts = attempts
        self.endpoint = endpoint
        self.upgrade = upgrade


class UpstreamResponse(Protocol):
    status: int
    headers: Headers

    async def read_chunk(self) -> bytes:
        """The next piece of the body; b"" once the body is complete."""

    @property
    def finished(self) -> bool:
        """True once every byte of the body has been handed out by `read_chunk`."""

    @property
    def chunk_ready(self) -> bool:
        """True when `read_chunk` would return without waiting. False is always safe: it only
        costs the response head a send of its own."""

    @property
    def trailers(self) -> Headers:
        """The trailer fields of a chunked body, as received, once `finished`; never part of
        `headers`."""

    def close(self) -> None:
        """Give the connection back (if the exchange finished cleanly) or drop it."""


class UpstreamTransport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send the request and return once the response head has arrived."""

    async def aclose(self) -> None:
        """Close every connection."""
