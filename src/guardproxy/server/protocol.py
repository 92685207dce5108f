"""guardproxy's HTTP/1.1 server protocol, plugged into uvicorn as its `http` protocol class.

uvicorn still runs the process: listeners, connection tracking, graceful shutdown, the admin app.
The proxy listener's per-connection protocol is guardproxy's own because measurements decided
it (bench/, README "Performance"): uvicorn's httptools protocol spent ~25 µs of CPU per request
here, more than the whole guard chain, on work a proxy does not need (a regex over every response
header guardproxy already validated, timers armed and cancelled per request, two writes per
response).

Parsing is httptools (llhttp), which refuses Content-Length with Transfer-Encoding, duplicate or
signed Content-Length, bad chunk sizes, bare CR/LF, NUL and obs-fold (RFC 9112 §6.1, §6.3). On
top of it this module:
- answers every malformed request with an RFC 9457 problem and closes the connection, because
  its framing can no longer be trusted;
- refuses a transfer coding other than exactly `chunked` before any guard sees the request
  (decoded chunks under a dropped gzip coding would reach the upstream corrupted);
- limits the request line (414), the head's size and field count (431);
- enforces deadlines that trickling bytes cannot extend: the request head (408), body progress
  (408), idle keep-alive;
- raises OSError from `send` once the client is gone (ASGI 2.4), so a long download stops
  reading from the upstream at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote

import httptools
import structlog
import uvicorn

from guardproxy import problems
from guardproxy.asgi import ASGIApp, Headers
from guardproxy.guards.request_id import new_request_id
from guardproxy.server.exchange import Exchange, status_line
from guardproxy.server.limits import ConnectionLimits, Lifecycle

log = structlog.get_logger(component="guardproxy.server")

_HIGH_WATER = 256 * 1024
# The usual methods as str without a decode per request; any other is decoded as it comes.
_METHODS = {method.encode("ascii"): method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


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
        limits: ConnectionLimits | None = None,
        lifecycle: Lifecycle | None = None,
        answer_headers: Sequence[tuple[bytes, bytes]] = (),
        count_refusal: Callable[[int], None] | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.limits = limits or ConnectionLimits()
        self.lifecycle = lifecycle or Lifecycle()
        # Added to every answer the server gives itself (security headers, for one).
        self.answer_headers = list(answer_headers)
        # Refusals never reach the guard chain (nor its metrics): counted here, by status.
        self.count_refusal = count_refusal
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        # One lazily re-armed timer per connection enforces every deadline: a request only
        # moves timestamps, it never arms or cancels a timer itself.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._waiting_since = 0.0
        self._fresh = True
        self._head_started = False
        self._refused = False
        self._closing = False
        # The exchange being answered, then any pipelined ones waiting behind it.
        self._exchanges: deque[Exchange] = deque()
        # The exchange whose bytes the parser is currently reading (the newest one).
        self._parsing: Exchange | None = None
        self._url = b""
        self._headers: Headers = []
        self._head_bytes = 0
        self._head_raw = 0
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
        head_was_incomplete = self._head_started
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Protocol upgrades are not tunnelled (yet): the request was served as a plain one
            # and the connection closes after it, since llhttp stops parsing here.
            pass
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(problems.BAD_REQUEST, _parser_detail(exc))
            return
        if self._head_started:
            # The head is still incomplete. llhttp buffers a partial field without limit, so its
            # size is checked here too, not only in on_header: these are (at most) head bytes.
            self._head_raw = (self._head_raw if head_was_incomplete else 0) + len(data)
            if self._head_raw > self.limits.max_head_bytes:
                self._refuse(problems.HEADERS_TOO_LARGE, "The request head is too large.")

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
        self._head_bytes = 0
        self._expect_continue = False
        if not self._exchanges:
            # The keep-alive wait is over. The head is due `head_timeout` after the connection
            # opened or the previous response ended, however slowly its bytes trickle in.
            self._head_started = True
            self._ensure_timer()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri_bytes:
            self._refuse(problems.URI_TOO_LONG, "The request target is too long.")
            raise _RequestRefused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes + len(self._url) > self.limits.max_head_bytes:
            self._refuse(problems.HEADERS_TOO_LARGE, "The request head is too large.")
            raise _RequestRefused
        if len(self._headers) >= self.limits.max_header_fields:
            self._refuse(problems.HEADERS_TOO_LARGE, "The request has too many header fields.")
            raise _RequestRefused
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_started = False
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
        parser = self.parser
        http_version = parser.get_http_version()
        if http_version not in ("1.1", "1.0"):
            # llhttp accepts an HTTP/0.9 request line ("GET /x"); nothing behind a proxy should.
            self._refuse(problems.BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 requests are accepted.")
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
        method = parser.get_method()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": _METHODS.get(method) or method.decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": headers,
        }
        keep_alive = http_version != "1.0" and parser.should_keep_alive() and not parser.should_upgrade()
        exchange = Exchange(self, scope, keep_alive=keep_alive, expect_continue=self._expect_continue)
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

    # used by Exchange

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

    def waiting_for_body(self) -> None:
        """The application waits for request body bytes: the body deadline applies now."""
        self._ensure_timer()

    def exchange_done(self, exchange: Exchange) -> None:
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

    def _start(self, exchange: Exchange) -> None:
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
            exchange = self._exchanges[0]
            if exchange.waiting_for_body:
                return exchange.body_progress_at + self.limits.body_timeout
            return None  # the application is working; the upstream timeouts apply
        if self._fresh or self._head_started:
            return self._waiting_since + self.limits.head_timeout
        return self._waiting_since + self.limits.keep_alive_timeout

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
        if deadline is None or self.transport is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:
            self._ensure_timer()
        elif self._exchanges:
            log.info("request body stalled", client=self.client[0] if self.client else None)
            self._exchanges[0].body_stalled()
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
        if self.count_refusal is not None:
            self.count_refusal(problem.status)
        request_id = new_request_id()
        log.warning(
            "request refused",
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
        head = problems.problem_head(
            body, [*self.answer_headers, (b"x-request-id", request_id.encode()), (b"connection", b"close")]
        )
        fields = [b"%s: %s\r\n" % field for field in head]
        self.transport.write(b"".join([status_line(problem.status), *fields, b"\r\n", body]))
        self.transport.close()


def _parser_detail(exc: httptools.HttpParserError) -> str:
    # llhttp's reasons are fixed strings about the request's own bytes ("Invalid character in
    # Content-Length"): safe and useful to the client that sent them.
    reason = str(exc).strip()
    if isinstance(exc, httptools.HttpParserCallbackError) or not reason:
        return "The request is not valid HTTP/1.1."
    return f"The request is not valid HTTP/1.1: {reason}."
