"""guardproxy's HTTP/1.1 server protocol, plugged into uvicorn as its `http` protocol class.

uvicorn still runs the process: listeners, connection tracking, graceful shutdown, the admin
app. The per-connection protocol is guardproxy's own because uvicorn's spent ~25 µs of CPU per
request here (bench/) on work a proxy does not need: a regex over every response header,
timers armed per request, two writes per response.

Parsing is httptools (llhttp), which refuses Content-Length with Transfer-Encoding, duplicate or
signed Content-Length, bad chunk sizes, bare CR/LF, NUL and obs-fold (RFC 9112 §6.1, §6.3). On
top of it this module:
- answers every malformed request with a problem (through the chain) and closes the connection;
- refuses a transfer coding other than exactly `chunked` before any guard sees the request
  (decoded chunks under a dropped gzip coding would reach the upstream corrupted);
- limits the request line (414), the head's size and field count (431);
- holds the request target and Host to RFC 9112 §3.2 (http1/targets.py): 400 for a missing,
  repeated or invalid Host, and an absolute-form target's authority replaces Host;
- enforces deadlines that trickling bytes cannot extend: the request head (408), body progress
  (408), idle keep-alive;
- raises OSError from `send` once the client is gone (ASGI 2.4), so a long download stops
  reading from the upstream at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any, Final, cast
from urllib.parse import unquote

import httptools
import uvicorn

from guardproxy import problems
from guardproxy.answer import RefusedError
from guardproxy.asgi import Headers
from guardproxy.http1.flow import HIGH_WATER, FlowControl
from guardproxy.http1.targets import VALID_HOSTS, valid_host, vet_target
from guardproxy.outcomes import Outcome
from guardproxy.server.exchange import Exchange
from guardproxy.server.handoff import hold_after_upgrade, upgrade_app
from guardproxy.server.limits import ConnectionLimits, Handler, Lifecycle, Site
from guardproxy.server.refusals import coding_refusal, parser_detail, refused_scope
from guardproxy.server.runner import ExchangeRunner

# The usual methods as str without a decode per request; any other is decoded as it comes.
_METHODS: Final = {name.encode("ascii"): name for name in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


class _RequestRefused(Exception):
    """Raised inside a parser callback to stop parsing a request that has been refused."""


class Phase(Enum):
    """Where the connection is between requests; the deadline that applies follows from it."""

    HEAD = "head"  # a request head is due: a fresh connection, or one whose head is arriving
    IDLE = "idle"  # keep-alive: nothing is due until the client starts a new request
    BUSY = "busy"  # exchanges are in progress; their body and the upstream timeouts apply
    REFUSED = "refused"  # a request was refused: nothing more is read from this connection


# As module constants (Final: C statics when compiled), ~10x cheaper than a member read on its class.
HEAD_DUE: Final = Phase.HEAD
IDLE: Final = Phase.IDLE
BUSY: Final = Phase.BUSY
REFUSED: Final = Phase.REFUSED


class ProxyHttpProtocol(asyncio.Protocol):
    """One client connection: parses requests and runs each through the ASGI app in turn."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        site: Callable[[], Site],
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.loop = _loop or asyncio.get_event_loop()
        self.connections: set[Any] = server_state.connections
        self.runner = ExchangeRunner(self.loop, server_state.tasks, self)
        # What this listener serves, looked up for every request: after a reload, requests on
        # a kept-alive connection are served by the new runtime, the ones in flight by the old.
        self._site = site
        current = site()
        self.app: Handler = current.app
        self.limits: ConnectionLimits = current.limits
        self.lifecycle = lifecycle or Lifecycle()
        self.flow = FlowControl(self.loop)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.phase = HEAD_DUE
        # One lazily re-armed timer per connection enforces every deadline: a request only
        # moves timestamps, it never arms or cancels a timer itself.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._waiting_since = 0.0
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

    @property
    def refused(self) -> bool:
        return self.phase is REFUSED

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flow.attach(self.transport)
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
        self.runner.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for exchange in self._exchanges:
            exchange.client_gone()
        self.flow.wake_writer()

    def data_received(self, data: bytes) -> None:
        if self.phase is REFUSED:
            return
        head_was_incomplete = self.phase is HEAD_DUE
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops at an upgrade request's head: nothing more is parsed as HTTP here.
            # What followed it waits for a tunnel (server/handoff.py), reading stops meanwhile.
            self.phase = REFUSED
            self.flow.pause_reading()
            hold_after_upgrade(self._parsing.scope if self._parsing else None, data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if not self.refused:  # a callback may have refused already, and stopped the parser
                self._refuse(problems.BAD_REQUEST, parser_detail(exc), Outcome.MALFORMED)
            return
        if self.phase is HEAD_DUE:
            # The head is still incomplete. llhttp buffers a partial field without limit, so its
            # size is checked here too, not only in on_header: these are (at most) head bytes.
            self._head_raw = (self._head_raw if head_was_incomplete else 0) + len(data)
            if self._head_raw > self.limits.max_head_bytes:
                self._refuse(problems.HEADERS_TOO_LARGE, "The request head is too large.", Outcome.HEAD_TOO_LARGE)

    def eof_received(self) -> bool | None:
        # A half-closed client may still read our answer; the exchange decides when to close.
        return True if self._exchanges else None

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._expect_continue = False
        if not self._exchanges:
            # The keep-alive wait is over. The head is due `head_timeout` after the connection
            # opened or the previous response ended, however slowly its bytes trickle in.
            site = self._site()
            self.app, self.limits = site.app, site.limits
            self.phase = HEAD_DUE
            self._ensure_timer()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri_bytes:
            self._refuse(problems.URI_TOO_LONG, "The request target is too long.", Outcome.URI_TOO_LONG)
            raise _RequestRefused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes + len(self._url) > self.limits.max_head_bytes:
            self._refuse(problems.HEADERS_TOO_LARGE, "The request head is too large.", Outcome.HEAD_TOO_LARGE)
            raise _RequestRefused
        if len(self._headers) >= self.limits.max_header_fields:
            self._refuse(problems.HEADERS_TOO_LARGE, "The request has too many header fields.", Outcome.HEAD_TOO_LARGE)
            raise _RequestRefused
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self._headers
        host: bytes | None = None
        hosts = 0
        for name, value in headers:
            if name == b"host":
                host = value
                hosts += 1
            elif name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                refusal = coding_refusal(value)
                self._refuse(refusal.problem, refusal.detail, refusal.outcome)
                raise _RequestRefused
        parser = self.parser
        http_version = parser.get_http_version()
        if http_version not in ("1.1", "1.0"):
            # llhttp accepts an HTTP/0.9 request line ("GET /x"); nothing behind a proxy should.
            self._refuse(problems.BAD_REQUEST, "Only HTTP/1.0 and HTTP/1.1 requests are accepted.", Outcome.MALFORMED)
            raise _RequestRefused
        method = parser.get_method()
        target = self._url
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            url = None
        # The usual request, origin-form (the target begins with `/`) with one Host seen valid
        # before, costs these tests; anything else is judged by http1/targets.py (RFC 9112 §3.2).
        if url is None or hosts != 1 or target[:1] != b"/" or (host not in VALID_HOSTS and not valid_host(host or b"")):
            try:
                raw_path, query = vet_target(
                    method, target, url, headers=headers, http_version=http_version, hosts=hosts, host=host
                )
            except RefusedError as refusal:
                self._refuse(refusal.problem, refusal.detail, refusal.outcome)
                raise _RequestRefused from None
        else:
            raw_path, query = url.path, url.query
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
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
            "query_string": query or b"",
            "headers": headers,
        }
        keep_alive = http_version != "1.0" and parser.should_keep_alive() and not parser.should_upgrade()
        app = self.app
        if not keep_alive and parser.should_upgrade():
            app = upgrade_app(self, scope, self._site()) or app
        assert self.transport is not None
        exchange = Exchange(
            self, self.transport, app, scope, keep_alive=keep_alive, expect_continue=self._expect_continue
        )
        self._parsing = exchange
        self._queue(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None and exchange.feed_body(body) > HIGH_WATER:
            self.flow.pause_reading()

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

    def release_transport(self) -> tuple[asyncio.Transport, bool]:
        """A tunnel takes the connection over (server/handoff.py); the timer finds no transport."""
        transport, self.transport = self.transport, None
        self.connections.discard(self)
        self.runner.stop()
        return cast(asyncio.Transport, transport), self.flow.write_paused

    # used by Exchange

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
            self.runner.start(self._exchanges[0])
        elif self.phase is not REFUSED:
            self.phase = IDLE
            self._waiting_since = self.loop.time()
            self._ensure_timer()
        self.flow.resume_reading()

    # internals

    def _queue(self, exchange: Exchange) -> None:
        self._exchanges.append(exchange)
        if len(self._exchanges) == 1:
            if self.phase is not REFUSED:
                self.phase = BUSY
            self.runner.start(exchange)
        else:
            # Pipelined: answered in order, after the ones before it.
            self.flow.pause_reading()

    def _deadline(self) -> float | None:
        phase = self.phase
        if self._exchanges:
            exchange = self._exchanges[0]
            if exchange.waiting_for_body:
                return exchange.body_progress_at + self.limits.body_timeout
            return None  # the application is working; the upstream timeouts apply
        if phase is HEAD_DUE:
            return self._waiting_since + self.limits.head_timeout
        if phase is IDLE:
            return self._waiting_since + self.limits.keep_alive_timeout
        return None

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
            self._exchanges[0].body_stalled()
        elif self.phase is HEAD_DUE:
            self._refuse(problems.REQUEST_TIMEOUT, "The request head did not arrive in time.", Outcome.HEAD_TIMEOUT)
        else:
            self.transport.close()  # idle keep-alive connection: nothing to say

    def _refuse(self, problem: problems.ProblemType, detail: str, outcome: Outcome) -> None:
        """Refuse what the parser is reading and stop reading this connection. The answer goes
        through the application (`Handler.answer_refusal`) like any other; the connection
        closes after it, because its framing can no longer be trusted."""
        self.phase = REFUSED
        if self.transport is None or self.transport.is_closing():
            return
        refusal = RefusedError(problem, detail, outcome)
        exchange = self._parsing
        if exchange is not None and not exchange.finished and not exchange.body_complete:
            # The broken bytes belong to the body of a request the application has: it answers.
            if exchange.response_started:
                # Its response has begun; an answer now would interleave with it.
                self.transport.close()
            else:
                exchange.refuse(refusal)
            return
        # A request of its own, answered in turn after the ones before it.
        self._parsing = None
        scope = refused_scope(self.parser, self._url, self.limits, peers=(self.client, self.server), scheme=self.scheme)
        self._queue(Exchange(self, self.transport, self.app, scope, keep_alive=False, refusal=refusal))
