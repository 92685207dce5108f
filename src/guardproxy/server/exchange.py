"""One request and its response on a client connection: the ASGI `receive` and `send`.

The connection feeds it the request body as it is parsed; the application answers through
`send`, which frames the body (http1/framing.py) and sends the head together with the first
body chunk. Two explicit states say where the exchange is: `request` (is more body coming, or
did the body break, stall or lose its client?) and `response` (not started, streaming, done).

A request body that breaks (a bad chunk) or stalls is not answered here: `receive` raises the
`RefusedError` that describes it, and the guard chain answers with a problem like any other
refusal, so the client gets its request ID and the security headers and the access log gets
one line with the real status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable
from enum import Enum
from typing import Any, Final, Protocol

import structlog

from guardproxy import problems
from guardproxy.answer import RefusedError
from guardproxy.asgi import Headers, Message
from guardproxy.http1.flow import FlowControl
from guardproxy.http1.framing import (
    CHUNKED,
    CLOSE_DELIMITED,
    CONTINUE,
    LAST_CHUNK,
    LAST_CHUNK_LINE,
    LENGTH,
    NO_BODY,
    chunk,
    response_framing,
    status_line,
)
from guardproxy.outcomes import Outcome
from guardproxy.server.disconnect import ClientDisconnectedError
from guardproxy.server.limits import Handler, Lifecycle

log: Final = structlog.get_logger(component="guardproxy.server")


class RequestState(Enum):
    RECEIVING = "receiving"  # more body is coming
    COMPLETE = "complete"  # the whole body has been parsed (or there is none)
    REFUSED = "refused"  # the body broke or stalled: `refusal` says how
    GONE = "gone"  # the client disconnected


class ResponseState(Enum):
    NOT_STARTED = "not_started"
    STREAMING = "streaming"
    TRAILERS = "trailers"  # the body is complete; the declared trailer section is due
    COMPLETE = "complete"
    ABORTED = "aborted"  # the connection was cut so a partial response cannot pass for whole


# The members as module constants: on CPython 3.11 `RequestState.GONE` costs ~130 ns (the enum
# metaclass' attribute lookup), a global ~12 ns, and the hot path checks states a dozen times
# per request (measured: +32k instructions per request with class attributes). Final, so the
# compiled build reads them from C statics, not the module's dict.
RECEIVING: Final = RequestState.RECEIVING
COMPLETE: Final = RequestState.COMPLETE
REFUSED: Final = RequestState.REFUSED
GONE: Final = RequestState.GONE
NOT_STARTED: Final = ResponseState.NOT_STARTED
STREAMING: Final = ResponseState.STREAMING
TRAILERS: Final = ResponseState.TRAILERS
RESPONSE_COMPLETE: Final = ResponseState.COMPLETE
ABORTED: Final = ResponseState.ABORTED
# A response start without headers (ASGI allows leaving them out); never modified.
_NO_FIELDS: Final[Headers] = []


class Connection(Protocol):
    """What an exchange needs of the connection it runs on (server/protocol.py)."""

    loop: asyncio.AbstractEventLoop
    flow: FlowControl
    lifecycle: Lifecycle

    def waiting_for_body(self) -> None: ...

    def exchange_done(self, exchange: Exchange) -> None: ...


class Exchange:
    __slots__ = (
        "_body",
        "_body_waiter",
        "_connection",
        "_expect_continue",
        "_framing",
        "_held_head",
        "_remaining",
        "_trailers",
        "_transport",
        "app",
        "body_progress_at",
        "keep_alive",
        "refusal",
        "request",
        "response",
        "scope",
        "waiting_for_body",
    )

    def __init__(
        self,
        connection: Connection,
        transport: asyncio.Transport,
        app: Handler,
        scope: dict[str, Any],
        *,
        keep_alive: bool,
        expect_continue: bool = False,
        refusal: RefusedError | None = None,
    ) -> None:
        self._connection = connection
        self._transport = transport
        self.app = app
        self.scope = scope
        self.keep_alive = keep_alive
        self._expect_continue = expect_continue
        self._body: deque[bytes] = deque()
        self._body_waiter: asyncio.Future[None] | None = None
        # Set when the server refuses the request before the application sees it (its head
        # could not be trusted): the exchange then carries no body and only answers.
        self.refusal = refusal
        self.request = RECEIVING if refusal is None else COMPLETE
        self.response = NOT_STARTED
        # Read by the connection's deadline timer: a body that stops arriving gets 408.
        self.waiting_for_body = False
        self.body_progress_at = 0.0
        self._held_head: bytes | None = None
        self._framing = NO_BODY
        self._remaining = 0
        # The application declared trailers (ASGI's http.response.trailers extension): the
        # response ends with that message, not with the last body message.
        self._trailers = False

    @property
    def body_complete(self) -> bool:
        return self.request is COMPLETE

    @property
    def client_disconnected(self) -> bool:
        return self.request is GONE

    @property
    def response_started(self) -> bool:
        return self.response is not NOT_STARTED

    @property
    def finished(self) -> bool:
        return self.response is RESPONSE_COMPLETE or self.response is ABORTED

    # fed by the connection

    def feed_body(self, data: bytes) -> int:
        """Queue a piece of the request body; returns how many bytes now wait to be read."""
        self._body.append(data)
        self.body_progress_at = self._connection.loop.time()
        self._wake()
        return sum(map(len, self._body)) if len(self._body) > 1 else len(data)

    def end_body(self) -> None:
        if self.request is RECEIVING:
            self.request = COMPLETE
            self._wake()

    def client_gone(self) -> None:
        self.request = GONE
        self._wake()

    def refuse(self, refusal: RefusedError) -> None:
        """The request body broke or stalled: the application's next `receive` raises `refusal`
        and nothing incomplete goes upstream; the connection closes after the answer."""
        if self.request is RECEIVING:
            self.request = REFUSED
            self.refusal = refusal
            self.keep_alive = False
            self._wake()

    def body_stalled(self) -> None:
        """The connection's timer found no body progress for too long."""
        self.refuse(RefusedError(problems.REQUEST_TIMEOUT, "The request body stopped arriving.", Outcome.BODY_TIMEOUT))

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ASGI

    async def run(self) -> None:
        if self.request is GONE:
            # Gone before the task started: nothing of this request goes anywhere.
            self._abort()
            return
        try:
            if self.refusal is not None:
                # Refused before the application saw it (a broken head, or a body broken in the
                # same packet as its head): answered without any of it going upstream.
                await self.app.answer_refusal(self.refusal, self.scope, self.send)
            else:
                await self.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            # Shutdown ran out of grace time: cut the connection, never fake a response.
            self._abort()
            raise
        except Exception as exc:
            # The guard chain is the safety net that answers with a problem; this is the net
            # under it, for a failure in the chain itself.
            log.error("unhandled error in the application", exc_info=exc)
            if not self.response_started and not self.client_disconnected:
                await self._send_problem(problems.INTERNAL_ERROR, "guardproxy could not handle this request.")
        if not self.finished:
            # The application gave up mid-response (guardproxy does so on purpose when the
            # upstream fails mid-body): cut the connection so the client sees a truncated
            # response as truncated, never as complete.
            self._abort()

    async def receive(self) -> Message:
        if self._expect_continue:
            self._expect_continue = False
            if self.response is NOT_STARTED and not self._transport.is_closing():
                self._transport.write(CONTINUE)
        connection = self._connection
        if not self._body and self.request is RECEIVING:
            self.waiting_for_body = True
            self.body_progress_at = connection.loop.time()
            connection.waiting_for_body()
            while not self._body and self.request is RECEIVING:
                connection.flow.resume_reading()
                self._body_waiter = connection.loop.create_future()
                await self._body_waiter
            self.waiting_for_body = False
        request = self.request
        if request is REFUSED:
            assert self.refusal is not None
            raise self.refusal
        if request is GONE or self.finished:
            return {"type": "http.disconnect"}
        if len(self._body) == 1:
            body = self._body.popleft()
        else:
            body = b"".join(self._body)
            self._body.clear()
        connection.flow.resume_reading()
        return {"type": "http.request", "body": body, "more_body": request is RECEIVING}

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function handing back what to await: a message that need not wait for the
        # client to read (nearly all) returns the connection's done future, no coroutine.
        if self.request is GONE or self._transport.is_closing():
            raise ClientDisconnectedError("client disconnected")
        flow = self._connection.flow
        if self.response is NOT_STARTED:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']!r}")
            self._start_response(
                message["status"], message.get("headers", _NO_FIELDS), message.get("body_ready") is True
            )
            self._trailers = message.get("trailers") is True
            return flow.ready
        if self.response is not STREAMING or message["type"] != "http.response.body":
            if self.response is TRAILERS and message["type"] == "http.response.trailers":
                self._send_trailers(message)
                return flow.ready
            raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        out = self._frame(body, more_body)
        held, self._held_head = self._held_head, None
        if held is not None:
            out = held + out
        if out:
            self._transport.write(out)
        if not more_body:
            if self._trailers:
                self.response = TRAILERS  # the trailers message ends the response
            else:
                self._finish()
        elif flow.write_paused:
            return self._drain()
        return flow.ready

    async def _drain(self) -> None:
        """Wait until the client has read enough of what was written (backpressure)."""
        await self._connection.flow.drain()
        if self.client_disconnected:
            raise ClientDisconnectedError("client disconnected")

    # internals

    def _start_response(self, status: int, headers: Headers, body_ready: bool) -> None:
        self.response = STREAMING
        self._expect_continue = False
        if self._connection.lifecycle.draining or self.request is not COMPLETE:
            # Draining: this client should take its next request to another instance. Or the
            # request body is not all read: the connection closes after this response (see
            # ProxyHttpProtocol.exchange_done), so say so.
            self.keep_alive = False
        lines = [status_line(status)]
        content_length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue
            # Four appends, not `lines += (...)`: no tuple per field (compiled, each is one C call).
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        scope = self.scope
        framing = self._framing = response_framing(scope["method"], status, scope["http_version"], content_length)
        if framing is LENGTH:
            assert content_length is not None
            self._remaining = content_length
        elif framing is CHUNKED:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif framing is CLOSE_DELIMITED:
            # An HTTP/1.0 client learns where the body ends from the connection closing.
            self.keep_alive = False
        if not self.keep_alive and status != 101:  # a 101 carries Connection: upgrade instead
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        # Held: it leaves together with the first body chunk. When the application says that
        # chunk is already at hand (`body_ready`, a guardproxy extension of the start message:
        # the forwarder sets it when the upstream's first chunk is buffered), it simply waits
        # for it; otherwise it waits one loop turn at most, then leaves alone (a slow stream).
        self._held_head = b"".join(lines)
        if not body_ready:
            self._connection.loop.call_soon(self._flush_head)

    def _send_trailers(self, message: Message) -> None:
        """The trailer section after a chunked body's last chunk (RFC 9112 §7.1.2); any other
        framing has no place for trailers, so they are dropped. Several trailers messages (ASGI
        `more_trailers`) add up to one section."""
        fields = message.get("headers", ())
        if self._framing is CHUNKED and not self._transport.is_closing():
            self._transport.write(b"".join(b"%b: %b\r\n" % field for field in fields))
        if not message.get("more_trailers", False):
            if self._framing is CHUNKED and not self._transport.is_closing():
                self._transport.write(b"\r\n")
            self._finish()

    def _frame(self, body: bytes, more_body: bool) -> bytes:
        framing = self._framing
        if framing is CHUNKED:
            if not more_body and self._trailers:
                return chunk(body) + LAST_CHUNK_LINE  # the trailer section follows
            return chunk(body) if more_body else chunk(body) + LAST_CHUNK
        if framing is LENGTH:
            self._remaining -= len(body)
            if self._remaining < 0 or (not more_body and self._remaining != 0):
                raise RuntimeError("response body does not match its Content-Length")
            return body
        if framing is NO_BODY:
            return b""  # HEAD, 204, 304: whatever the application sends, the client gets no body
        return body

    def _flush_head(self) -> None:
        held, self._held_head = self._held_head, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def _finish(self) -> None:
        self.response = RESPONSE_COMPLETE
        self._connection.exchange_done(self)

    def _abort(self) -> None:
        self.response = ABORTED
        self._flush_head()
        self._transport.close()
        self._connection.exchange_done(self)

    async def _send_problem(self, problem: problems.ProblemType, detail: str) -> None:
        """A problem from the server itself, when the application could not give one."""
        body = problems.render_problem(problem, detail, instance=self.scope["path"])
        self.keep_alive = False
        with contextlib.suppress(ClientDisconnectedError):
            await self.send(
                {"type": "http.response.start", "status": problem.status, "headers": problems.problem_head(body)}
            )
            await self.send({"type": "http.response.body", "body": body})
