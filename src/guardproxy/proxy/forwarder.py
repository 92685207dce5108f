"""The ASGI endpoint at the end of the guard chain: relays one request to the upstream.

Bodies stream in both directions (a chunk at a time, with backpressure); the method, raw path
and raw query go out byte for byte. From a peer that is not a trusted proxy, every field that
claims client identity or the original scheme, host, port, prefix, URL or method is removed
(trusted_proxies.untrusted_strip); X-Forwarded-For/-Proto/-Host/-Port and X-Real-IP are then
guardproxy's own, from what it verified. Failures before the response starts become RFC 9457
problems (502/503/504); after it has started, the client connection is cut so that a truncated
body can never be mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Iterable
from typing import Final

import structlog

from guardproxy import problems
from guardproxy.answer import Answer, ResponseAbortedError
from guardproxy.asgi import Headers, Message, Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.http1.fields import (
    CLIENT_CLAIM_FIELDS,
    HOP_BY_HOP,
    PLAIN_CONNECTION,
    REWRITTEN_REQUEST_FIELDS,
    VIA,
    end_to_end,
    strip_response_headers,
    trailer_fields,
)
from guardproxy.outcomes import Outcome
from guardproxy.proxy.errors import (
    NoEndpointError,
    PoolExhaustedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from guardproxy.proxy.transport import UpstreamRequest, UpstreamTransport

log: Final = structlog.get_logger(component="guardproxy.proxy")

_DROPPED_REQUEST_FIELDS: Final = HOP_BY_HOP | REWRITTEN_REQUEST_FIELDS
_SCHEMES: Final = {"http": b"http", "https": b"https"}
_METHODS: Final = {
    method: method.encode("ascii") for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class ClientDisconnectedError(Exception):
    """The client went away before its request body was complete."""


class Forwarder:
    def __init__(
        self,
        transport: UpstreamTransport,
        *,
        upstream_authority: bytes,
        preserve_host: bool,
        untrusted_strip: Iterable[str] = CLIENT_CLAIM_FIELDS,
        forward_trailers: bool = True,
    ):
        self._transport = transport
        self._upstream_authority = upstream_authority
        self._preserve_host = preserve_host
        self._forward_trailers = forward_trailers
        # Chosen per request by whether the peer is a trusted proxy, so the pass over the
        # client's fields stays one pass. X-Forwarded-Port is guardproxy's own for an untrusted
        # peer (it is set below), and a trusted proxy's otherwise.
        names = [name.lower().encode("ascii") for name in untrusted_strip]
        self._drop_from_trusted = _DROPPED_REQUEST_FIELDS
        self._drop_from_untrusted = (
            _DROPPED_REQUEST_FIELDS | {b"x-forwarded-port"} | {name for name in names if not name.endswith(b"*")}
        )
        self._untrusted_prefixes = tuple(name[:-1] for name in names if name.endswith(b"*"))
        # Their first bytes: one set lookup per field before a startswith() with a tuple, a
        # method call the compiled build cannot shorten. (No prefix is empty: the settings refuse
        # a bare "*".)
        self._untrusted_initials = frozenset(prefix[:1] for prefix in self._untrusted_prefixes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Hands back the coroutine that does the work: no coroutine of its own per request.
        context: RequestContext = scope[CONTEXT_KEY]
        total_timeout = context.route.total_timeout
        if total_timeout is None:
            return self._forward(scope, receive, send, context)
        return self._forward_within(total_timeout, scope, receive, send, context)

    async def _forward_within(
        self, total_timeout: float, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        try:
            async with asyncio.timeout(total_timeout):
                await self._forward(scope, receive, send, context)
        except TimeoutError:
            log.warning("upstream exchange exceeded its total timeout", request_id=context.request_id)
            if context.status:
                context.outcome = Outcome.UPSTREAM_TIMEOUT
                raise ResponseAbortedError from None
            await self.answer_failure(scope, send, context, UpstreamTimeoutError("total timeout"))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, context: RequestContext) -> None:
        request, takes_trailers = self.upstream_request(scope, context, receive)
        started = time.perf_counter()
        try:
            response = await self._transport.send(request)
        except ClientDisconnectedError:
            context.outcome = Outcome.CLIENT_CLOSED
            return
        except UpstreamError as exc:
            context.upstream_attempts, context.upstream_endpoint = request.attempts, request.endpoint
            await self.answer_failure(scope, send, context, exc)
            return
        context.upstream_seconds = time.perf_counter() - started
        context.upstream_attempts, context.upstream_endpoint = request.attempts, request.endpoint
        context.status = response.status
        # Upstream trailer fields go on as trailers only to a client that said it takes them
        # (RFC 9110 §10.1.4); the exchange sends them only after a chunked body, and drops
        # them otherwise. They never join the header section.
        trailers = takes_trailers and self._forward_trailers and scope["http_version"] == "1.1"
        try:
            start: Message = {
                "type": "http.response.start",
                "status": response.status,
                "headers": strip_response_headers(response.headers, response.status),
            }
            if trailers:
                start["trailers"] = True
            if response.chunk_ready:
                # The first chunk is here and is sent next: the head can wait for it and leave
                # in the same write, with no flush of its own scheduled (server/exchange.py).
                start["body_ready"] = True
            await send(start)
            while True:
                # Each chunk goes out as soon as it arrives (server-sent events depend on it);
                # the last one says so when the body is already complete, saving a send.
                chunk = await response.read_chunk()
                finished = response.finished
                await send({"type": "http.response.body", "body": chunk, "more_body": not finished})
                if finished:
                    if trailers:
                        fields = trailer_fields(response.trailers)
                        await send({"type": "http.response.trailers", "headers": fields, "more_trailers": False})
                    return
        except OSError:
            # The client left (ASGI 2.4 send raises OSError): stop reading the upstream's body;
            # closing the response drops that connection.
            context.outcome = Outcome.CLIENT_CLOSED
        except UpstreamError as exc:
            context.outcome = (
                Outcome.UPSTREAM_TIMEOUT if isinstance(exc, UpstreamTimeoutError) else Outcome.UPSTREAM_ERROR
            )
            log.warning(
                "upstream failed mid-response",
                request_id=context.request_id,
                route=context.route.name,
                error=exc.kind,
            )
            raise ResponseAbortedError from None
        finally:
            response.close()

    def upstream_request(  # noqa: PLR0912, PLR0915 - one pass on the hot path, kept in one piece
        self, scope: Scope, context: RequestContext, receive: Receive
    ) -> tuple[UpstreamRequest, bool]:
        """The request for the upstream, and whether the client takes trailers."""
        client_headers: Headers = scope["headers"]
        trusted = context.peer_trusted
        drop = self._drop_from_trusted if trusted else self._drop_from_untrusted
        prefixes = () if trusted else self._untrusted_prefixes
        initials = self._untrusted_initials
        # One pass over the client's fields: what passes on, and what framing and Host say.
        headers: Headers = []
        host: bytes | None = None
        content_length: int | None = None
        chunked = False
        connection_named = False
        takes_trailers = False
        for field in client_headers:
            name = field[0]
            if name in drop:
                if name == b"host":
                    host = field[1]
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"connection" and field[1].lower() not in PLAIN_CONNECTION:
                    connection_named = True  # it may name fields to remove, not just keep-alive
                elif name == b"te":
                    takes_trailers = b"trailers" in field[1].lower()
                continue
            if prefixes and name[:1] in initials and name.startswith(prefixes):
                continue
            if name == b"content-length":
                content_length = int(field[1])
            headers.append(field)
        if connection_named:
            # Rare: a Connection field may name others to remove (RFC 9110 §7.6.1).
            headers = end_to_end(client_headers, drop)
            if prefixes:
                headers = [field for field in headers if not field[0].startswith(prefixes)]
        # The fields guardproxy sets itself, from what it verified. For an untrusted peer the
        # client is the peer, whose address ClientAddressGuard already encoded.
        client = context.forwarded_for if not trusted and context.forwarded_for else context.client_host.encode("ascii")
        headers += (
            (b"host", host if self._preserve_host and host else self._upstream_authority),
            (b"x-forwarded-for", context.forwarded_for or client),
            (b"x-forwarded-proto", _SCHEMES.get(context.scheme) or context.scheme.encode("ascii")),
            (b"x-real-ip", client),
            (b"via", VIA),
        )
        server = scope.get("server")  # optional in ASGI (None when unknown)
        if not trusted and server is not None:
            # The port the client connected to; a trusted proxy's own X-Forwarded-Port is kept.
            headers.append(_PORT_FIELDS.get(server[1]) or _port_field(server[1]))
        forwarded_host = context.host or host
        if forwarded_host:
            headers.append((b"x-forwarded-host", forwarded_host))
        request_id = context.request_id
        if request_id:
            headers.append((b"x-request-id", request_id.encode("ascii")))
        if context.traceparent:
            headers.append((b"traceparent", context.traceparent))
            if context.tracestate:
                headers.append((b"tracestate", context.tracestate))
        target = scope["raw_path"]
        query = scope["query_string"]
        if query:
            target += b"?" + query
        route = context.route
        method: str = scope["method"]
        request = UpstreamRequest(
            method=_METHODS.get(method) or method.encode("ascii"),
            target=target,
            headers=headers,
            body=_RequestBody(receive, context) if chunked or content_length else None,
            content_length=None if chunked else content_length,
            connect_timeout=route.connect_timeout,
            read_timeout=route.read_timeout,
            route=route.name,
        )
        return request, takes_trailers

    async def answer_failure(self, scope: Scope, send: Send, context: RequestContext, exc: UpstreamError) -> None:
        if isinstance(exc, UpstreamTimeoutError):
            context.outcome = Outcome.UPSTREAM_TIMEOUT
            problem, detail = problems.UPSTREAM_TIMEOUT, "The upstream service did not answer in time."
        elif isinstance(exc, PoolExhaustedError):
            context.outcome = Outcome.UPSTREAM_BUSY
            problem, detail = problems.UPSTREAM_BUSY, "The upstream service is at its connection limit."
        elif isinstance(exc, NoEndpointError):
            context.outcome = Outcome.UPSTREAM_CIRCUIT_OPEN
            problem, detail = problems.UPSTREAM_CIRCUIT_OPEN, "No instance of the upstream service is taking requests."
        elif isinstance(exc, UpstreamProtocolError):
            context.outcome = Outcome.UPSTREAM_ERROR
            problem, detail = (
                problems.UPSTREAM_BAD_RESPONSE,
                "The upstream service sent a response that is not valid HTTP.",
            )
        else:
            context.outcome = Outcome.UPSTREAM_ERROR
            problem, detail = problems.UPSTREAM_UNAVAILABLE, "The upstream service could not be reached."
        log.warning(
            "upstream request failed",
            request_id=context.request_id,
            route=context.route.name,
            error=exc.kind,
            reason=str(exc),
        )
        headers = [(b"retry-after", b"1")] if isinstance(exc, PoolExhaustedError) else []
        if isinstance(exc, NoEndpointError):
            headers = [(b"retry-after", b"%d" % max(1, math.ceil(exc.retry_after)))]
        await Answer.problem(scope, problem, detail, headers).send(send)


# The X-Forwarded-Port field by listener port: built once, not per request.
_PORT_FIELDS: Final[dict[int, tuple[bytes, bytes]]] = {}


def _port_field(port: int) -> tuple[bytes, bytes]:
    field = _PORT_FIELDS[port] = (b"x-forwarded-port", b"%d" % port)
    return field


class _RequestBody:
    """The client's body as the upstream request streams it, counted as it goes. A class, not an
    async generator: the compiled build (setup.py) cannot compile those."""

    __slots__ = ("_context", "_done", "_receive")

    def __init__(self, receive: Receive, context: RequestContext) -> None:
        self._receive = receive
        self._context = context
        self._done = False

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        body: bytes = message.get("body", b"")
        self._context.request_bytes += len(body)
        if not message.get("more_body", False):
            self._done = True
        return body
