"""One request and its response on a client connection: the ASGI `receive` and `send`.

The protocol feeds it the request body as it is parsed; the application answers through `send`,
which frames the body (Content-Length, chunked, or close-delimited for HTTP/1.0) and sends the
head together with the first body chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import structlog

from guardproxy import problems
from guardproxy.asgi import ASGIApp, Message

if TYPE_CHECKING:
    from guardproxy.server.protocol import ProxyHttpProtocol

log = structlog.get_logger(component="guardproxy.server")

_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode("ascii"))
    for status in range(100, 600)
    if status in http.HTTPStatus._value2member_map_
}
_NO_BODY_STATUSES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class ClientDisconnectedError(OSError):
    """Raised by `send` when the client has gone away (ASGI 2.4 asks for an OSError)."""


class Exchange:
    __slots__ = (
        "_body",
        "_body_waiter",
        "_chunked",
        "_expect_continue",
        "_held_head",
        "_more_body",
        "_protocol",
        "_remaining",
        "_transport",
        "body_progress_at",
        "body_timed_out",
        "disconnected",
        "keep_alive",
        "response_complete",
        "response_started",
        "scope",
        "waiting_for_body",
    )

    def __init__(self, protocol: ProxyHttpProtocol, scope: dict[str, Any], *, keep_alive: bool, expect_continue: bool):
        self._protocol = protocol
        self._transport = cast(asyncio.Transport, protocol.transport)
        self.scope = scope
        self.keep_alive = keep_alive
        self._expect_continue = expect_continue
        self._body: deque[bytes] = deque()
        self._more_body = True
        self._body_waiter: asyncio.Future[None] | None = None
        # Read by the protocol's deadline timer: a body that stops arriving gets 408.
        self.waiting_for_body = False
        self.body_progress_at = 0.0
        self.body_timed_out = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self._held_head: bytes | None = None
        self._chunked = False
        self._remaining: int | None = None

    @property
    def body_complete(self) -> bool:
        return not self._more_body

    # fed by the protocol

    def feed_body(self, data: bytes) -> int:
        """Queue a piece of the request body; returns how many bytes now wait to be read."""
        self._body.append(data)
        self.body_progress_at = self._protocol.loop.time()
        self._wake()
        return sum(map(len, self._body)) if len(self._body) > 1 else len(data)

    def end_body(self) -> None:
        self._more_body = False
        self._wake()

    def client_gone(self) -> None:
        self.disconnected = True
        self._wake()

    def body_stalled(self) -> None:
        """The protocol's timer found no body progress for too long."""
        self.body_timed_out = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ASGI

    async def run(self, app: ASGIApp) -> None:
        if self.disconnected:
            # Refused (a broken body in the same packet as its head) or gone before the task
            # started: nothing of this request goes anywhere.
            self._abort()
            return
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            # Shutdown ran out of grace time: cut the connection, never fake a response.
            self._abort()
            raise
        except Exception as exc:
            log.error("unhandled error in the application", exc_info=exc)
            if not self.response_started and not self.disconnected:
                await self._send_problem(problems.INTERNAL_ERROR, "guardproxy could not handle this request.")
        if self.body_timed_out and not self.response_started:
            await self._send_problem(problems.REQUEST_TIMEOUT, "The request body stopped arriving.")
        if not self.response_complete:
            # The application gave up mid-response (guardproxy does so on purpose when the
            # upstream fails mid-body): cut the connection so the client sees a truncated
            # response as truncated, never as complete.
            self._abort()

    async def receive(self) -> Message:
        if self._expect_continue:
            self._expect_continue = False
            if not self.response_started and not self._transport.is_closing():
                self._transport.write(_CONTINUE)
        if not self._body and self._more_body and not self.disconnected:
            self.waiting_for_body = True
            self.body_progress_at = self._protocol.loop.time()
            self._protocol.waiting_for_body()
            while not self._body and self._more_body and not self.disconnected and not self.body_timed_out:
                self._protocol.resume_reading()
                self._body_waiter = self._protocol.loop.create_future()
                await self._body_waiter
            self.waiting_for_body = False
        if self.disconnected or self.body_timed_out or self.response_complete:
            return {"type": "http.disconnect"}
        if len(self._body) == 1:
            body = self._body.popleft()
        else:
            body = b"".join(self._body)
            self._body.clear()
        self._protocol.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self._more_body}

    async def send(self, message: Message) -> None:
        if self.disconnected or self._transport.is_closing():
            raise ClientDisconnectedError("client disconnected")
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']!r}")
            self._start_response(message["status"], message.get("headers", ()))
            return
        if self.response_complete or message["type"] != "http.response.body":
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
            self._finish()
        elif self._protocol.write_paused:
            await self._protocol.drain()
            if self.disconnected:
                raise ClientDisconnectedError("client disconnected")

    # internals

    def _start_response(self, status: int, headers: Any) -> None:
        self.response_started = True
        self._expect_continue = False
        if self._protocol.lifecycle.draining or self._more_body:
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
            lines += (name, b": ", value, b"\r\n")
        if self.scope["method"] != "HEAD" and status not in _NO_BODY_STATUSES and status >= 200:
            if content_length is not None:
                self._remaining = content_length
            elif self.scope["http_version"] == "1.1":
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                # An HTTP/1.0 client learns where the body ends from the connection closing.
                self.keep_alive = False
        else:
            self._remaining = 0
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        # Held for one loop turn: it leaves together with the first body chunk if that comes
        # right away (the usual case), or alone when the turn ends (a slow stream).
        self._held_head = b"".join(lines)
        self._protocol.loop.call_soon(self._flush_head)

    def _frame(self, body: bytes, more_body: bool) -> bytes:
        if self._chunked:
            if body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            return body + b"0\r\n\r\n" if not more_body else body
        if self._remaining == 0 and self.scope["method"] == "HEAD":
            return b""
        if self._remaining is not None:
            self._remaining -= len(body)
            if self._remaining < 0 or (not more_body and self._remaining != 0):
                raise RuntimeError("response body does not match its Content-Length")
        return body

    def _flush_head(self) -> None:
        held, self._held_head = self._held_head, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def _finish(self) -> None:
        self.response_complete = True
        self._protocol.exchange_done(self)

    def _abort(self) -> None:
        self.response_complete = True
        self._flush_head()
        self._transport.close()
        self._protocol.exchange_done(self)

    async def _send_problem(self, problem: problems.ProblemType, detail: str) -> None:
        """A problem from the server itself, when the application could not give one."""
        body = problems.render_problem(problem, detail, instance=self.scope["path"])
        self.keep_alive = False
        with contextlib.suppress(ClientDisconnectedError):
            await self.send(
                {"type": "http.response.start", "status": problem.status, "headers": problems.problem_head(body)}
            )
            await self.send({"type": "http.response.body", "body": body})
