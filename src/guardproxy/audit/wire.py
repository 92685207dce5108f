"""Raw HTTP/1.1 over asyncio streams, for the probes no HTTP client will send: a malformed
request, a head dripped byte by byte, a body declared but never sent, a foreign Host.

Every read is bounded in bytes and time; the response is parsed with httptools (the parser
guardproxy's own server uses), so a peer that speaks garbage is reported, never trusted.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import httptools

from guardproxy.audit.evidence import MAX_BODY_BYTES, Exchange


@dataclass
class _Collector:
    """httptools callbacks: the first response on the connection."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    head_done: bool = False
    complete: bool = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        room = MAX_BODY_BYTES - len(self.body)
        if room > 0:
            self.body += body[:room]

    def on_message_complete(self) -> None:
        self.complete = True


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: ssl.SSLContext | None
    server_hostname: str | None

    async def connect(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(timeout):
            return await asyncio.open_connection(
                self.host, self.port, ssl=self.tls, server_hostname=self.server_hostname if self.tls else None
            )


async def read_response(reader: asyncio.StreamReader, label: str, *, timeout: float, started: float) -> Exchange:
    """Read one response until it is complete, the peer closes, or `timeout` seconds pass."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    deadline = time.monotonic() + timeout
    closed = False
    error: str | None = None
    received = 0
    while not collector.complete:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            error = f"no complete answer within {timeout:g} s"
            break
        try:
            async with asyncio.timeout(remaining):
                data = await reader.read(65536)
        except TimeoutError:
            continue
        except (ConnectionError, OSError):
            data = b""
        if not data:
            closed = True
            break
        received += len(data)
        if received > MAX_BODY_BYTES + 65536 and collector.head_done:
            break  # enough of it: the evidence is in the head and the first bytes
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            break
        except httptools.HttpParserError:
            return Exchange(label, error="answered with bytes that are not HTTP/1.x", elapsed=_since(started))
    if not collector.head_done:
        reason = "closed the connection without an answer" if closed else error or "no answer"
        return Exchange(label, error=reason, elapsed=_since(started), closed=closed)
    return Exchange(
        label,
        status=parser.get_status_code(),
        headers=tuple(collector.headers),
        body=bytes(collector.body),
        error=None if collector.complete or closed else error,
        elapsed=_since(started),
        closed=closed,
    )


async def send_raw(endpoint: Endpoint, data: bytes, label: str, *, timeout: float) -> Exchange:
    """Send `data` on a fresh connection and read the first response."""
    started = time.monotonic()
    try:
        reader, writer = await endpoint.connect(timeout)
    except (TimeoutError, OSError) as exc:
        return Exchange(label, error=connect_error(exc, timeout), elapsed=_since(started))
    try:
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # a server may refuse and close before it has read everything; its answer counts
        return await read_response(reader, label, timeout=timeout, started=started)
    finally:
        await close(writer)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(1):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        pass


def connect_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    return f"cannot connect: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


def _since(started: float) -> float:
    return time.monotonic() - started
