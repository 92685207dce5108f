"""One HTTP/1.1 connection to the upstream: an asyncio protocol around httptools' response parser.

A raw protocol instead of a client library because this is the hot path: DESIGN.md's
measurements put httpx at ~0.02 and aiohttp at ~0.15 of nginx's throughput, this design at ~0.45.

Flow control runs both ways (http1/flow.py, as on the server side). Request bodies wait in
`wait_writable` while the socket's buffer is full; response bodies stop the socket reading once
`HIGH_WATER` bytes wait for a slow client, so memory per exchange stays bounded however large
the body is.

Timeouts are not timers per request: the pool's ticker calls `check_idle`, and an exchange fails
once nothing has moved either way for its idle timeout (nginx's proxy_read_timeout and
proxy_send_timeout in one). A request body going out counts as progress, so a slow upload that
keeps flowing is not cut.

What the upstream sends is held to limits before it is believed: a status outside 100-599, a head
past its byte or field limit, or a trailer section that grows past the same limits fails the
exchange (UpstreamProtocolError, a 502 for the client), so nothing is buffered without bound.
Trailer fields, which llhttp reports through on_header after the last chunk, are kept apart
from the head (`trailers`) and never join it. Interim 1xx responses are dropped
(`on_headers_complete` says why).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, cast

import httptools

from guardproxy.asgi import Headers
from guardproxy.http1.flow import HIGH_WATER, FlowControl
from guardproxy.http1.framing import NO_BODY_STATUSES
from guardproxy.proxy.errors import (
    UpstreamClosedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from guardproxy.proxy.tunnel import TunnelEnd

# Of a fixed length, so that `in` compiles to two comparisons.
_FRAMING_FIELDS: Final = (b"content-length", b"transfer-encoding")
# Generous: real response heads are a few hundred bytes; these only stop an upstream from making
# guardproxy buffer without bound (upstream.max_response_head_bytes / _header_fields).
DEFAULT_MAX_HEAD_BYTES: Final = 64 * 1024
DEFAULT_MAX_HEADER_FIELDS: Final = 200


def _size(fields: Headers) -> int:
    return sum(len(name) + len(value) + 4 for name, value in fields)


class _Stop(Exception):
    """Raised in a parser callback once the exchange has failed, to stop parsing at once."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_header_fields: int = DEFAULT_MAX_HEADER_FIELDS,
    ) -> None:
        self._loop = loop
        self._max_head_bytes = max_head_bytes
        self._max_header_fields = max_header_fields
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self.closed = False
        self.exchanges = 0
        self.idle_since = 0.0
        self._flow = FlowControl(loop)
        # Per exchange, reset by `begin`.
        self._head_only = False
        self._interim = False
        self._status = 0
        # Fields as they are parsed: the head's, then (once the head is complete) the trailer
        # section's, which llhttp reports through the same on_header after the last chunk.
        self._headers: Headers = []
        self._head_fields: Headers = []
        self._framed = False
        self._keep_alive = False
        self._request_sent = True
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: UpstreamError | None = None
        self._bytes_received = 0
        # Bytes received since the head or the last piece of body: a trailer section's size.
        self._quiet = 0
        self._idle_timeout = 0.0
        self._last_activity = 0.0
        self._switching = False
        # After a 101 it asked for: the connection as the tunnel's upstream end.
        self.switched: TunnelEnd | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._flow.attach(self._transport)

    def data_received(self, data: bytes) -> None:
        self._bytes_received += len(data)
        self._quiet += len(data)
        self._last_activity = self._loop.time()
        if self._head is None or self._complete:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self._fail(UpstreamProtocolError("unsolicited data"))
            return
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as upgrade:
            if self._status == 101:  # the switch this exchange asked for (expect_switch)
                self._switch(data[upgrade.args[0] :])
            else:
                self._fail(UpstreamProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response: {exc}"))
        if not self._status:
            if self._bytes_received > self._max_head_bytes:
                # Still no final head: every byte so far was head (httptools buffers a partial
                # field without limit, so the size is checked here, not only per field).
                self._fail(UpstreamProtocolError("response head too large"))
        elif self._quiet > self._max_head_bytes and not self._complete:
            # Past the head, bytes that yield no body: after the last chunk, the trailer
            # section, whose fields httptools buffers like a head's.
            self._fail(UpstreamProtocolError("response trailer section too large"))

    def eof_received(self) -> bool | None:
        if not self._framed and self.head_received and not self._complete and self._error is None:
            # RFC 9112 §6.3: without Content-Length or chunked framing, the close ends the body.
            self._finish()
        self._on_closed(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed(exc)

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._max_header_fields:
            # The head's fields, or (after the head) the trailer section's.
            self._fail(UpstreamProtocolError("too many response fields"))
            raise _Stop
        name = name.lower()
        if name in _FRAMING_FIELDS:
            self._framed = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        assert self._head is not None
        if self._complete or self._head.done():
            self._fail(UpstreamProtocolError("more than one response to one request"))
            return
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 §15: a status is three digits, 1xx to 5xx; llhttp passes any three.
            self._fail(UpstreamProtocolError(f"status {status} is outside 100-599"))
            raise _Stop
        if status < 200:
            if status == 101 and self._switching:
                # The upgrade asked for: a final head; what follows it is the new protocol.
                self._status = status
                self._head_fields, self._headers = self._headers, []
                self._complete = True
                self._head.set_result(None)
                return
            # An interim response (100 Continue, 103 Early Hints): dropped, on purpose, and the
            # final one awaited. guardproxy answers 100-continue itself; 103 would reach the
            # client before the security, CORS and header-removal hooks could judge its fields
            # (they run on the final head), it is for browsers preloading a page's
            # subresources, which an API does not have, and some HTTP/1.1 clients mistake an
            # unexpected 1xx for the response (RFC 8297 §3). Its bytes count toward the limit
            # on the head's size.
            self._interim = True
            self._headers = []
            self._framed = False
            return
        if self._bytes_received > self._max_head_bytes and _size(self._headers) > self._max_head_bytes:
            # The whole head came in one read (data_received only sees heads spanning reads).
            self._fail(UpstreamProtocolError("response head too large"))
            raise _Stop
        self._status = status
        self._quiet = 0
        # What follows on_header now are trailer fields: kept apart, never in the head.
        self._head_fields = self._headers
        self._headers = []
        if status in NO_BODY_STATUSES:
            self._framed = True
        # Read now: llhttp resets its flags once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        self._head.set_result(None)
        self._flow.wake_writer()
        if self._head_only:
            # llhttp cannot know the request was HEAD; the response ends with its head.
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._fail(UpstreamProtocolError("body on a response that has none"))
            return
        self._quiet = 0
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER:
            self._flow.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self._complete:
            self._finish()

    # Used by the pool and the forwarder

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and self._keep_alive
            and self._request_sent
            and not self.closed
            and self._error is None
            and not self._chunks
        )

    def abandon_request(self) -> None:
        """The request was not sent in full: this connection must not carry another one."""
        self._request_sent = False

    def expect_switch(self) -> None:
        """The request asks to upgrade: a 101 ends its exchange and the connection becomes a
        tunnel end (`switched`). Whatever the answer, the connection is not reused."""
        self._switching = True
        self._request_sent = False

    @property
    def received_nothing(self) -> bool:
        return self._bytes_received == 0

    @property
    def head(self) -> asyncio.Future[None]:
        assert self._head is not None
        return self._head

    @property
    def head_received(self) -> bool:
        return self._head is not None and self._head.done()

    @property
    def body_drained(self) -> bool:
        return self._complete and not self._chunks

    @property
    def trailers(self) -> Headers:
        """The trailer fields once the body is complete (lower-case names, as received)."""
        return self._headers if self._status and self._complete else []

    def begin(self, *, head_only: bool, idle_timeout: float) -> None:
        """Start an exchange that fails once nothing moves either way for `idle_timeout` seconds."""
        if self._parser is None or self._head_only:
            # A parser is reused across keep-alive exchanges, except after a HEAD: llhttp still
            # expects the body that HEAD's Content-Length announced.
            self._parser = httptools.HttpResponseParser(self)
        self.exchanges += 1
        self._head_only = head_only
        self._interim = False
        self._status = 0
        self._headers = []
        self._head_fields = []
        self._framed = False
        self._keep_alive = False
        self._request_sent = True
        self._head = self._loop.create_future()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._bytes_received = 0
        self._quiet = 0
        self._idle_timeout = idle_timeout
        self._last_activity = self._loop.time()

    def write(self, data: bytes) -> None:
        if self.closed or self._transport is None:
            raise self._error or UpstreamClosedError("connection closed")
        self._transport.write(data)
        self._last_activity = self._loop.time()

    async def wait_writable(self) -> None:
        """Wait while the socket buffer is full."""
        if self._flow.write_paused and not self.closed:
            await self._flow.drain()
        if self.closed:
            raise self._error or UpstreamClosedError("connection closed while sending")

    def response_head(self) -> tuple[int, Headers]:
        """Status and fields once `head` is done; raises what failed the exchange before then."""
        if self._error is not None and not self._status:
            raise self._error
        return self._status, self._head_fields

    @property
    def chunk_ready(self) -> bool:
        """Whether `read_chunk` returns without waiting: a piece is buffered, or the body ended
        or broke."""
        return bool(self._chunks) or self._complete or self._error is not None

    async def read_chunk(self) -> bytes:
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._body_waiter = self._loop.create_future()
            await self._body_waiter
        if len(self._chunks) == 1:
            data = self._chunks.popleft()
        else:
            # Pieces that arrived together leave together: no extra latency, fewer sends.
            data = b"".join(self._chunks)
            self._chunks.clear()
        self._buffered = 0
        self._flow.resume_reading()
        return data

    def check_idle(self, now: float) -> None:
        """Called by the pool's ticker while an exchange is in progress."""
        if not self._complete and not self.closed and now - self._last_activity >= self._idle_timeout:
            self._fail(UpstreamTimeoutError("no progress within the upstream timeout"))

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self.closed = True

    # internals

    def _switch(self, rest: bytes) -> None:
        transport, self._transport = self._transport, None
        assert transport is not None
        self.closed = True  # as an HTTP connection
        self.switched = TunnelEnd(transport, rest)
        transport.set_protocol(self.switched)

    def _finish(self) -> None:
        self._complete = True
        self._wake_reader()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._release_waiters()

    def _on_closed(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if not self._complete and self._error is None and self._head is not None:
            reason = "connection reset" if exc is not None else "connection closed"
            self._error = UpstreamClosedError(f"{reason} before the response was complete")
        if not was_closed and self._transport is not None:
            self._transport.close()
        self._release_waiters()

    def _release_waiters(self) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        self._wake_reader()
        self._flow.wake_writer()

    def _wake_reader(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)
