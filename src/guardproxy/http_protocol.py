"""guardproxy's HTTP/1.1 server protocol, plugged into uvicorn as its `http` protocol class.

uvicorn still runs the process: listeners, connection tracking, graceful shutdown, the admin app.
The proxy listener's per-connection protocol is guardproxy's own because measurements decided
it (bench/, README "Performance"): uvicorn's httptools protocol spent ~25 µs of CPU per request
here, more than the whole guard chain, on work a proxy does not need (a regex over every response
header guardproxy already validated, an asyncio.Event per request, a second write per response).

Parsing is httptools (llhttp), which refuses Content-Length with Transfer-Encoding, duplicate or
signed Content-Length, bad chunk sizes, bare CR/LF, NUL and obs-fold (RFC 9112 §6.1, §6.3). On
top of it this module:
- answers every malformed request with an RFC 9457 problem and closes the connection, because
  its framing can no longer be trusted;
- refuses a transfer coding other than exactly `chunked` before any guard sees the request
  (decoded chunks under a dropped gzip coding would reach the upstream corrupted);
- sends a response head and its first body chunk in one write;
- closes idle keep-alive connections, and connections whose request head does not arrive in
  time (uvicorn restarts its timer on every byte, so a client dripping bytes was never cut);
- raises OSError from `send` once the client is gone (ASGI 2.4), so a long download stops
  reading from the upstream at once.
"""

from __future__ import annotations

import asyncio
import http
from collections import deque
from typing import Any, cast
from urllib.parse import unquote

import httptools
import structlog
import uvicorn

from guardproxy import problems
from guardproxy.asgi import ASGIApp, Headers, Message
from guardproxy.guards.request_id import new_request_id

log = structlog.get_logger(component="guardproxy.server")

_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode("ascii"))
    for status in range(100, 600)
    if status in http.HTTPStatus._value2member_map_
}
_HIGH_WATER = 256 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class ClientDisconnectedError(OSError):
    """Raised by `send` when the client has gone away (ASGI 2.4 asks for an OSError)."""


class _RequestRefused(Exception):
    """Raised inside a parser callback to stop parsing a request that has been answered."""


class ProxyHttpProtocol(asyncio.Protocol):
    """One client connection: parses requests and runs each through the ASGI app in turn."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        head_timeout: float = 10.0,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.keep_alive_timeout = float(config.timeout_keep_alive)
        self.head_timeout = head_timeout
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        # One lazily re-armed timer per connection enforces the keep-alive and head deadlines:
        # a request only moves `_waiting_since`, it never arms or cancels a timer itself.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._waiting_since = 0.0
        self._fresh = True
        self._head_started = False
        self._refused = False
        self._closing = False
        # The exchange being answered, then any pipelined ones waiting behind it.
        self._exchanges: deque[_Exchange] = deque()
        # The exchange whose bytes the parser is currently reading (the newest one).
        self._parsing: _Exchange | None = None
        self._url = b""
        self._headers: Headers = []
        self._expect_continue = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        self._waiting_since = self.loop.time()
        self._ensure_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for exchange in self._exchanges:
            exchange.client_gone()
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades are not tunnelled (yet): the request was served as a plain one
            # and the connection closes after it, since llhttp stops parsing here.
            pass
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(problems.BAD_REQUEST, _parser_detail(exc))

    def eof_received(self) -> bool | None:
        # A half-closed client may still read our answer; the exchange decides when to close.
        return True if self._exchanges else None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writers()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_continue = False
        if not self._exchanges:
            # The keep-alive wait is over. The head is due `head_timeout` after the connection
            # opened or the previous response ended, however slowly its bytes trickle in.
            self._head_started = True
            self._ensure_timer()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self._headers
        for name, value in headers:
            if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                codings = [coding.strip() for coding in value.lower().split(b",")]
                if codings[-1] == b"chunked":
                    # Valid HTTP (RFC 9112 §6.1) but a coding under chunked that guardproxy does
                    # not decode; §6.1 says 501.
                    self._refuse(problems.NOT_IMPLEMENTED, "Only the 'chunked' transfer coding is supported.")
                else:
                    self._refuse(problems.BAD_REQUEST, "Invalid Transfer-Encoding.")
                raise _RequestRefused
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(problems.BAD_REQUEST, "The request target is not a valid URL.")
            raise _RequestRefused from None
        raw_path: bytes = url.path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        parser = self.parser
        http_version = parser.get_http_version()
        if http_version not in ("1.1", "1.0"):
            # llhttp accepts an HTTP/0.9 request line ("GET /x"); nothing behind a proxy should.
            self._refuse(problems.BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 requests are accepted.")
            raise _RequestRefused
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": headers,
        }
        keep_alive = http_version != "1.0" and parser.should_keep_alive() and not parser.should_upgrade()
        exchange = _Exchange(self, scope, keep_alive=keep_alive, expect_continue=self._expect_continue)
        self._parsing = exchange
        self._exchanges.append(exchange)
        if len(self._exchanges) == 1:
            self._start(exchange)
        else:
            # Pipelined: answered in order, after the ones before it.
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None and exchange.feed_body(body) > _HIGH_WATER:
            self._pause_reading()

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.end_body()

    # used by uvicorn

    def shutdown(self) -> None:
        """Graceful shutdown: close an idle connection now, a busy one after its response."""
        self._closing = True
        if not self._exchanges and self.transport is not None:
            self.transport.close()
        for exchange in self._exchanges:
            exchange.keep_alive = False

    # used by _Exchange

    async def drain(self) -> None:
        while self.write_paused and self.transport is not None and not self.transport.is_closing():
            waiter = self._drain_waiter
            if waiter is None or waiter.done():
                waiter = self._drain_waiter = self.loop.create_future()
            await waiter

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def exchange_done(self, exchange: _Exchange) -> None:
        """Called once an exchange's response is complete: start the next one, or wait."""
        self._exchanges.popleft()
        if self.transport is None or self.transport.is_closing():
            return
        if not exchange.keep_alive or not exchange.body_complete or self._closing:
            # An unread request body would be parsed as the next request; closing is safer
            # than reading (and discarding) a body of unknown size.
            self.transport.close()
            return
        if self._exchanges:
            self._start(self._exchanges[0])
        else:
            self._waiting_since = self.loop.time()
            self._fresh = self._head_started = False
            self._ensure_timer()
        self.resume_reading()

    # internals

    def _start(self, exchange: _Exchange) -> None:
        task = self.loop.create_task(exchange.run(self.app))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _wake_writers(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deadline(self) -> float | None:
        if self._exchanges:
            return None  # a request is being answered; its own timeouts apply
        if self._fresh or self._head_started:
            return self._waiting_since + self.head_timeout
        return self._waiting_since + self.keep_alive_timeout

    def _ensure_timer(self) -> None:
        """Make sure a timer fires no later than the current deadline. Under steady traffic the
        deadline only moves later, so the pending timer stays and just re-checks when it fires."""
        deadline = self._deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None or self.transport is None:
            return
        if self.loop.time() < deadline:
            self._ensure_timer()
        elif self._fresh or self._head_started:
            log.info("request head not received in time", client=self.client[0] if self.client else None)
            self._refuse(problems.REQUEST_TIMEOUT, "The request head did not arrive in time.")
        else:
            self.transport.close()  # idle keep-alive connection: nothing to say

    def _refuse(self, problem: problems.ProblemType, detail: str) -> None:
        """Answer a request that never reached the application, then close the connection."""
        self._refused = True
        if self.transport is None or self.transport.is_closing():
            return
        request_id = new_request_id()
        log.warning(
            "malformed request refused",
            request_id=request_id,
            status=problem.status,
            detail=detail,
            client=self.client[0] if self.client else None,
        )
        exchange = self._parsing
        if exchange is not None and not exchange.response_complete:
            # The broken bytes belong to a request the application is already handling (a bad
            # chunk in its body): tell it the client is gone so nothing incomplete goes upstream.
            exchange.client_gone()
            if exchange.response_started or len(self._exchanges) > 1:
                # A response has begun on this connection; ours would interleave with it.
                self.transport.close()
                return
        body = problems.render_problem(problem, detail, request_id=request_id)
        head = problems.problem_head(body, [(b"x-request-id", request_id.encode()), (b"connection", b"close")])
        self.transport.write(
            b"".join([_status_line(problem.status), *(b"%s: %s\r\n" % f for f in head), b"\r\n", body])
        )
        self.transport.close()


class _Exchange:
    """One request and its response: the ASGI `receive` and `send` for a single request."""

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
        "disconnected",
        "keep_alive",
        "response_complete",
        "response_started",
        "scope",
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
        self._body.append(data)
        self._wake()
        return sum(map(len, self._body)) if len(self._body) > 1 else len(data)

    def end_body(self) -> None:
        self._more_body = False
        self._wake()

    def client_gone(self) -> None:
        self.disconnected = True
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
        except BaseException as exc:
            if not self.response_started:
                log.error("unhandled error before the response", exc_info=exc)
                if not self.disconnected:
                    await self._send_internal_error()
            else:
                log.error("unhandled error during the response", exc_info=exc)
            if not self.response_complete:
                self._abort()
            if not isinstance(exc, Exception):
                raise
        else:
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
        while not self._body and self._more_body and not self.disconnected:
            self._protocol.resume_reading()
            self._body_waiter = self._protocol.loop.create_future()
            await self._body_waiter
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        if len(self._body) == 1:
            body = self._body.popleft()
        else:
            body = b"".join(self._body)
            self._body.clear()
        self._protocol.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self._more_body}

    async def send(self, message: Message) -> None:
        if self.disconnected:
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
        method = self.scope["method"]
        lines = [_status_line(status)]
        content_length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue
            lines += (name, b": ", value, b"\r\n")
        body_allowed = method != "HEAD" and status not in _NO_BODY_STATUSES and status >= 200
        if body_allowed:
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

    async def _send_internal_error(self) -> None:
        body = problems.render_problem(
            problems.INTERNAL_ERROR, "guardproxy could not handle this request.", instance=self.scope["path"]
        )
        self.keep_alive = False
        await self.send({"type": "http.response.start", "status": 500, "headers": problems.problem_head(body)})
        await self.send({"type": "http.response.body", "body": body})


def _parser_detail(exc: httptools.HttpParserError) -> str:
    # llhttp's reasons are fixed strings about the request's own bytes ("Invalid character in
    # Content-Length"): safe and useful to the client that sent them.
    reason = str(exc).strip()
    if isinstance(exc, httptools.HttpParserCallbackError) or not reason:
        return "The request is not valid HTTP/1.1."
    return f"The request is not valid HTTP/1.1: {reason}."
