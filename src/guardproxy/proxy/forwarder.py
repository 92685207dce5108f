"""The ASGI endpoint at the end of the guard chain: relays one request to the upstream.

Bodies stream in both directions (a chunk at a time, with backpressure); the method, raw path
and raw query go out byte for byte. Failures before the response starts become RFC 9457
problems (502/503/504); after it has started, the client connection is cut so that a truncated
body can never be mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

import structlog

from guardproxy import problems
from guardproxy.answer import Answer, ResponseAbortedError
from guardproxy.asgi import Headers, Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.http1.fields import (
    HOP_BY_HOP,
    REWRITTEN_REQUEST_FIELDS,
    VIA,
    end_to_end,
    strip_response_headers,
)
from guardproxy.outcomes import Outcome
from guardproxy.proxy.errors import (
    PoolExhaustedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from guardproxy.proxy.transport import UpstreamRequest, UpstreamTransport

log = structlog.get_logger(component="guardproxy.proxy")

_DROPPED_REQUEST_FIELDS = HOP_BY_HOP | REWRITTEN_REQUEST_FIELDS
_SCHEMES = {"http": b"http", "https": b"https"}
_METHODS = {method: method.encode("ascii") for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


class ClientDisconnectedError(Exception):
    """The client went away before its request body was complete."""


class Forwarder:
    def __init__(self, transport: UpstreamTransport, *, upstream_authority: bytes, preserve_host: bool):
        self._transport = transport
        self._upstream_authority = upstream_authority
        self._preserve_host = preserve_host

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
            await self._answer_failure(scope, send, context, UpstreamTimeoutError("total timeout"))

    async def _forward(self, scope: Scope, receive: Receive, send: Send, context: RequestContext) -> None:
        request = self._upstream_request(scope, context, receive)
        started = time.perf_counter()
        try:
            response = await self._transport.send(request)
        except ClientDisconnectedError:
            context.outcome = Outcome.CLIENT_CLOSED
            return
        except UpstreamError as exc:
            await self._answer_failure(scope, send, context, exc)
            return
        context.upstream_seconds = time.perf_counter() - started
        context.status = response.status
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": strip_response_headers(response.headers, response.status),
                }
            )
            while True:
                # Each chunk goes out as soon as it arrives (server-sent events depend on it);
                # the last one says so when the body is already complete, saving a send.
                chunk = await response.read_chunk()
                finished = response.finished
                await send({"type": "http.response.body", "body": chunk, "more_body": not finished})
                if finished:
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

    def _upstream_request(self, scope: Scope, context: RequestContext, receive: Receive) -> UpstreamRequest:
        client_headers: Headers = scope["headers"]
        # One pass over the client's fields: what passes on, and what framing and Host say.
        headers: Headers = []
        host: bytes | None = None
        content_length: int | None = None
        chunked = False
        connection_named = False
        for field in client_headers:
            name = field[0]
            if name in _DROPPED_REQUEST_FIELDS:
                if name == b"host":
                    host = field[1]
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"connection":
                    connection_named = True
                continue
            if name == b"content-length":
                content_length = int(field[1])
            headers.append(field)
        if connection_named:
            # Rare: a Connection field may name others to remove (RFC 9110 §7.6.1).
            headers = end_to_end(client_headers, _DROPPED_REQUEST_FIELDS)
        request_id = context.request_id
        headers += (
            (b"host", host if self._preserve_host and host else self._upstream_authority),
            (b"x-forwarded-for", context.forwarded_for or context.client_host.encode("ascii")),
            (b"x-forwarded-proto", _SCHEMES.get(context.scheme) or context.scheme.encode("ascii")),
            (b"via", VIA),
        )
        forwarded_host = context.host or host
        if forwarded_host:
            headers.append((b"x-forwarded-host", forwarded_host))
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
        return UpstreamRequest(
            method=_METHODS.get(method) or method.encode("ascii"),
            target=target,
            headers=headers,
            body=_request_body(receive, context) if chunked or content_length else None,
            content_length=None if chunked else content_length,
            connect_timeout=route.connect_timeout,
            read_timeout=route.read_timeout,
        )

    async def _answer_failure(self, scope: Scope, send: Send, context: RequestContext, exc: UpstreamError) -> None:
        if isinstance(exc, UpstreamTimeoutError):
            context.outcome = Outcome.UPSTREAM_TIMEOUT
            problem, detail = problems.UPSTREAM_TIMEOUT, "The upstream service did not answer in time."
        elif isinstance(exc, PoolExhaustedError):
            context.outcome = Outcome.UPSTREAM_BUSY
            problem, detail = problems.UPSTREAM_BUSY, "The upstream service is at its connection limit."
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
        await Answer.problem(scope, problem, detail, headers).send(send)


async def _request_body(receive: Receive, context: RequestContext) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        body = message.get("body", b"")
        context.request_bytes += len(body)
        yield body
        if not message.get("more_body", False):
            return
