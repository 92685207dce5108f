"""The first guard: gives the request its context (route, client) and a safety net for errors.

Whatever goes wrong further down, the client gets an RFC 9457 problem (before the response has
started) or a cut connection (after), never uvicorn's plain-text 500 and never a traceback.
"""

from __future__ import annotations

import structlog

from guardproxy import problems
from guardproxy.asgi import ASGIApp, Message, Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.proxy.forwarder import ResponseAbortedError
from guardproxy.routes import RouteTable

log = structlog.get_logger(component="guardproxy")


class RequestContextGuard:
    def __init__(self, app: ASGIApp, *, routes: RouteTable) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        context = RequestContext(
            route=self.routes.match(scope["method"], scope["path"]),
            client_host=client[0] if client else "unknown",
        )
        scope[CONTEXT_KEY] = context
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ResponseAbortedError:
            # Returning without finishing the response makes uvicorn close the connection.
            return
        except Exception:
            log.exception("unhandled error", request_id=context.request_id, route=context.route.name)
            context.outcome = "internal_error"
            if not started:
                await problems.send_problem(
                    scope, send, problems.INTERNAL_ERROR, "guardproxy could not handle this request."
                )
