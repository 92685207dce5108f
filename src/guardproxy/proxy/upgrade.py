"""The endpoint of the chain for upgrade requests: forwards a handshake the WebSocket guard let
through with its upgrade kept, and on a matching 101 hands both connections to a tunnel.

- Anything without a `TunnelTicket` (a protocol the route does not tunnel) goes to the plain
  forwarder: Upgrade and Connection are removed like any hop-by-hop field.
- The upstream request is the plain forwarder's (same field hygiene, X-Forwarded-*, Via) plus
  `Connection: upgrade` and `Upgrade: <the protocol asked for>` (RFC 9110 §7.6.1 lets a proxy
  keep these for a tunnel it sets up on purpose). The `Sec-WebSocket-*` fields pass as the
  end-to-end fields they are.
- An answer other than 101 is an ordinary response. A 101 that switches to another protocol,
  or whose `Sec-WebSocket-Accept` does not answer the client's key (RFC 6455 §4.1), is a 502
  and the upstream connection is closed. A valid one goes to the client with the response
  hooks run on it (request ID, security headers), the access log gets its line (status 101)
  when this exchange ends, and the tunnel (proxy/tunnel.py) takes both connections over.
"""

from __future__ import annotations

import time

import structlog

from guardproxy import problems
from guardproxy.answer import Answer, ResponseAbortedError
from guardproxy.asgi import Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.http1.fields import strip_response_headers
from guardproxy.http1.upgrade import vet_switch
from guardproxy.outcomes import Outcome
from guardproxy.proxy.errors import UpstreamError, UpstreamTimeoutError
from guardproxy.proxy.forwarder import Forwarder
from guardproxy.proxy.transport import UpstreamResponse, UpstreamTransport
from guardproxy.proxy.tunnel import Tunnel, TunnelEnd
from guardproxy.proxy.tunnels import TICKET_KEY, Tunnels, TunnelTicket
from guardproxy.server.handoff import HANDOFF_KEY, ClientHandoff

log = structlog.get_logger(component="guardproxy.proxy")


class UpgradeForwarder:
    def __init__(self, forwarder: Forwarder, transport: UpstreamTransport, tunnels: Tunnels) -> None:
        self._forwarder = forwarder
        self._transport = transport
        self._tunnels = tunnels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ticket: TunnelTicket | None = scope.get(TICKET_KEY)
        handoff: ClientHandoff | None = scope.get(HANDOFF_KEY)
        if ticket is None or handoff is None:
            await self._forwarder(scope, receive, send)
            return
        context: RequestContext = scope[CONTEXT_KEY]
        request, _ = self._forwarder.upstream_request(scope, context, receive)
        if ticket.protocol == b"h2c":
            # RFC 7540 §3.2.1: the upgrade carries its settings in a field the client names in
            # Connection, the one hop-by-hop field kept besides Upgrade.
            request.headers += [field for field in scope["headers"] if field[0] == b"http2-settings"]
            request.headers.append((b"connection", b"upgrade, http2-settings"))
        else:
            request.headers.append((b"connection", b"upgrade"))
        request.headers.append((b"upgrade", ticket.protocol))
        request.body, request.content_length, request.upgrade = None, None, True
        started = time.perf_counter()
        try:
            response = await self._transport.send(request)
        except UpstreamError as exc:
            await self._forwarder.answer_failure(scope, send, context, exc)
            return
        context.upstream_seconds = time.perf_counter() - started
        try:
            if response.status != 101:
                await self._relay(response, send, context)
                return
            switch = getattr(response, "switch", None)  # a pool's response; other transports cannot
            end: TunnelEnd | None = switch() if switch is not None else None
            why = vet_switch(response.headers, ticket.protocol, ticket.handshake) if end is not None else "no switch"
            if why is not None:
                if end is not None:
                    end.transport.close()
                self._tunnels.refused("bad_switch")
                log.warning("upstream switched protocols wrongly", request_id=context.request_id, reason=why)
                context.outcome = Outcome.UPSTREAM_ERROR
                detail = "The upstream service did not accept the upgrade as it was asked."
                await Answer.problem(scope, problems.UPSTREAM_BAD_RESPONSE, detail).send(send)
                return
            assert end is not None
            await self._open(scope, send, context, ticket=ticket, handoff=handoff, response=response, upstream=end)
        finally:
            response.close()

    async def _open(
        self,
        scope: Scope,
        send: Send,
        context: RequestContext,
        *,
        ticket: TunnelTicket,
        handoff: ClientHandoff,
        response: UpstreamResponse,
        upstream: TunnelEnd,
    ) -> None:
        # Taken before the 101 goes out, so the end of this exchange does not close the connection.
        client = handoff.take()
        headers = strip_response_headers(response.headers, 101)
        headers += ((b"connection", b"upgrade"), (b"upgrade", ticket.protocol))
        try:
            await send({"type": "http.response.start", "status": 101, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            context.outcome = Outcome.CLIENT_CLOSED
            client.transport.close()
            upstream.transport.close()
            return
        ticket.opened = True
        tunnel = Tunnel(
            client,
            upstream,
            limits=ticket.limits,
            describe={
                "route": ticket.route,
                "request_id": context.request_id,
                "client": context.client_host,
                "path": scope["path"],
                "protocol": ticket.protocol.decode("ascii"),
            },
            on_close=self._tunnels.closed,
            connections=handoff.connections,
            frames=ticket.going_away and ticket.handshake is not None,
        )
        self._tunnels.opened(tunnel, ticket.route)
        tunnel.start()

    async def _relay(self, response: UpstreamResponse, send: Send, context: RequestContext) -> None:
        """An answer other than 101: passed on as an ordinary response."""
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": strip_response_headers(response.headers, response.status),
                }
            )
            while True:
                chunk = await response.read_chunk()
                finished = response.finished
                await send({"type": "http.response.body", "body": chunk, "more_body": not finished})
                if finished:
                    return
        except OSError:
            context.outcome = Outcome.CLIENT_CLOSED
        except UpstreamError as exc:
            timeout = isinstance(exc, UpstreamTimeoutError)
            context.outcome = Outcome.UPSTREAM_TIMEOUT if timeout else Outcome.UPSTREAM_ERROR
            raise ResponseAbortedError from None
