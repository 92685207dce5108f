"""A keep-alive HTTP/1.1 connection pool to one upstream origin; the real `UpstreamTransport`.

Idle connections are reused newest first (warm sockets, and the old ones age out), closed after
`idle_timeout`, and never reused once the upstream has closed them: the protocol notices the FIN
while the connection sits idle. For the race that remains (the upstream closes just as a request
goes out), a request is retried once on a fresh connection, but only when that cannot send
anything twice: the stale connection gave no response byte, the method is idempotent and no body
has been read from the client (RFC 9110 §9.2.2).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

from guardproxy.asgi import Headers
from guardproxy.http1 import framing
from guardproxy.proxy.connection import DEFAULT_MAX_HEAD_BYTES, DEFAULT_MAX_HEADER_FIELDS, UpstreamConnection
from guardproxy.proxy.errors import (
    PoolExhaustedError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from guardproxy.proxy.transport import UpstreamRequest
from guardproxy.proxy.tunnel import TunnelEnd

# How often stalled exchanges and expired idle connections are looked for: the precision of the
# upstream timeouts.
_TICK: Final = 0.1
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> bytes:
        default_port = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default_port else f"{host}:{self.port}").encode("ascii")


class PooledResponse:
    __slots__ = ("_connection", "_pool", "headers", "status")

    def __init__(self, pool: ConnectionPool, connection: UpstreamConnection, status: int, headers: Headers):
        self._pool = pool
        self._connection: UpstreamConnection | None = connection
        self.status = status
        self.headers = headers

    def read_chunk(self) -> Coroutine[Any, Any, bytes]:
        # The connection's coroutine itself: no coroutine of this wrapper's own per chunk.
        assert self._connection is not None, "read after close"
        return self._connection.read_chunk()

    @property
    def finished(self) -> bool:
        return self._connection is None or self._connection.body_drained

    @property
    def chunk_ready(self) -> bool:
        return self._connection is None or self._connection.chunk_ready

    @property
    def trailers(self) -> Headers:
        return self._connection.trailers if self._connection is not None else []

    def switch(self) -> TunnelEnd | None:
        """After a 101 the request asked for: the connection as a tunnel end; `close` then only
        takes it out of the pool's count."""
        return self._connection.switched if self._connection is not None else None

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class ConnectionPool:
    def __init__(
        self,
        origin: Origin,
        *,
        max_connections: int,
        max_idle_connections: int,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None,
        max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
        max_header_fields: int = DEFAULT_MAX_HEADER_FIELDS,
        tls_server_name: str | None = None,
    ) -> None:
        self.origin = origin
        # The name TLS verifies (and sends as SNI) when `origin` is one address of a DNS name.
        self._server_name = tls_server_name or origin.host
        self._max_head_bytes = max_head_bytes
        self._max_header_fields = max_header_fields
        self._max_connections = max_connections
        self._max_idle = max_idle_connections
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._running_loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[UpstreamConnection] = []
        self._open = 0
        self._busy: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ticker: asyncio.TimerHandle | None = None
        self._closing = False

    async def send(self, request: UpstreamRequest) -> PooledResponse:
        replayable = request.body is None and request.method in IDEMPOTENT_METHODS
        while True:
            connection = self._take_idle() or await self._acquire(request.connect_timeout)
            reused = connection.exchanges > 0
            try:
                connection.begin(head_only=request.method == b"HEAD", idle_timeout=request.read_timeout)
                if request.upgrade:
                    connection.expect_switch()
                connection.write(_request_head(request))
                if request.body is not None:
                    await _stream_body(connection, request)
                head = connection.head
                if not head.done():
                    await head
                status, headers = connection.response_head()
            except UpstreamClosedError as exc:
                self._discard(connection)
                if reused and connection.received_nothing and replayable:
                    continue
                exc.written, exc.received = True, not connection.received_nothing
                raise
            except BaseException as exc:
                self._discard(connection)
                if isinstance(exc, UpstreamError):
                    exc.written, exc.received = True, not connection.received_nothing
                raise
            return PooledResponse(self, connection, status, headers)

    def release(self, connection: UpstreamConnection) -> None:
        self._busy.discard(connection)
        if not connection.reusable or self._closing or len(self._idle) >= self._max_idle:
            self._discard(connection)
            return
        connection.idle_since = self._loop.time()
        self._idle.append(connection)
        self._wake_one_waiter()

    async def aclose(self) -> None:
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)
        # Busy connections go when their exchange ends: `release` discards them while closing.

    @property
    def open_connections(self) -> int:
        return self._open

    def _take_idle(self) -> UpstreamConnection | None:
        """The newest idle connection that is still usable, if there is one."""
        if self._ticker is None:
            self._ticker = self._loop.call_later(_TICK, self._tick)
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and self._loop.time() - connection.idle_since < self._idle_timeout:
                self._busy.add(connection)
                return connection
            self._discard(connection)
        return None

    async def _acquire(self, connect_timeout: float) -> UpstreamConnection:
        connection = self._take_idle()
        if connection is not None:
            return connection
        if self._open >= self._max_connections:
            await self._wait_for_slot(connect_timeout)
            return await self._acquire(connect_timeout)
        self._open += 1
        try:
            connection = await self._connect(connect_timeout)
        except BaseException:
            self._open -= 1
            self._wake_one_waiter()
            raise
        self._busy.add(connection)
        return connection

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        # Looked up once: on Python 3.11 get_running_loop() costs a getpid() system call per
        # use. An attribute, not functools.cached_property: a compiled class has no __dict__
        # for it to cache in, so it looked the loop up at every use (two getpid() per request).
        loop = self._running_loop
        if loop is None:
            loop = self._running_loop = asyncio.get_running_loop()
        return loop

    async def _connect(self, timeout: float) -> UpstreamConnection:
        loop = self._loop
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(
                        loop, max_head_bytes=self._max_head_bytes, max_header_fields=self._max_header_fields
                    ),
                    self.origin.host,
                    self.origin.port,
                    ssl=self._ssl,
                    server_hostname=self._server_name if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeoutError("connect timed out") from None
        except (OSError, ssl.SSLError, socket.gaierror) as exc:
            raise UpstreamConnectError(f"connect failed: {exc.__class__.__name__}") from None
        return connection

    async def _wait_for_slot(self, timeout: float) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            raise PoolExhaustedError("no upstream connection became free in time") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _discard(self, connection: UpstreamConnection) -> None:
        self._busy.discard(connection)
        connection.close()
        self._open -= 1
        self._wake_one_waiter()

    def _wake_one_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _tick(self) -> None:
        """One timer for the whole pool: times out stalled exchanges and closes expired idle
        connections, so no request pays for arming and cancelling a timer of its own."""
        now = self._loop.time()
        for connection in list(self._busy):
            connection.check_idle(now)
        if self._idle:
            keep = []
            for connection in self._idle:
                if connection.closed or now - connection.idle_since >= self._idle_timeout:
                    self._discard(connection)
                else:
                    keep.append(connection)
            self._idle = keep
        self._ticker = self._loop.call_later(_TICK, self._tick) if self._busy or self._idle else None


async def _stream_body(connection: UpstreamConnection, request: UpstreamRequest) -> None:
    """Send the request body, unless the upstream answers before taking all of it."""
    sending = asyncio.ensure_future(_send_body(connection, request))
    await asyncio.wait((sending, connection.head), return_when=asyncio.FIRST_COMPLETED)
    if not sending.done():
        # The upstream answered before taking the whole body (e.g. its own 413): stop
        # reading the client's body and relay the answer; the connection, with half a
        # request in it, is never reused.
        sending.cancel()
        connection.abandon_request()
    else:
        sending.result()


async def _send_body(connection: UpstreamConnection, request: UpstreamRequest) -> None:
    assert request.body is not None
    chunked = request.content_length is None
    async for data in request.body:
        if data:
            connection.write(framing.chunk(data) if chunked else data)
            await connection.wait_writable()
    if chunked:
        connection.write(framing.LAST_CHUNK)


def _request_head(request: UpstreamRequest) -> bytes:
    lines = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
    for name, value in request.headers:
        # Four appends, not `lines += (...)`: no tuple per field (compiled, each is one C call).
        lines.append(name)
        lines.append(b": ")
        lines.append(value)
        lines.append(b"\r\n")
    if request.body is not None and request.content_length is None:
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


__all__ = ["ConnectionPool", "Origin", "PooledResponse", "UpstreamError"]
