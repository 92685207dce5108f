"""The guard chain: one ordered list of small guards, run by one ASGI application.

A guard is a plain object with a few hooks, like a structlog processor:
  on_request(scope, context)            before forwarding, in chain order; returning an `Answer`
                                        (a refusal, a redirect, a preflight reply) ends the request
  on_request_async(scope, context)      the same for a decision that must wait (a Redis round trip);
                                        these run after every on_request hook, so a refusal that
                                        costs nothing always comes before one that costs a wait
  on_response_start(context, headers)   on every response head, guardproxy's own answers included,
                                        in reverse order (the first guard has the last word)
  on_complete(scope, context)           once the response is done or abandoned: metrics, logs
  wrap_receive(scope, context, receive) for guards that must see the request body as it streams;
                                        they refuse by raising RefusedError
  wrap_send(scope, context, send)       for guards that transform the response body (compression);
                                        they see each message after the on_response_start hooks
  start() / aclose()                    async, once per runtime: open and close what a guard owns
                                        (a key-set refresher, a connection pool); the chain calls
                                        them in order, and aclose in reverse
  readiness_checks()                    what /readyz reports for the guard, by name

Why not one nested ASGI middleware per guard: each nesting level costs a coroutine frame and a
wrapped `send` per request, measured at ~4 µs each here, and a dozen guards would have cost more
than the forwarding itself. Guards that must see body bytes (limits, compression) wrap only
`receive` or `send`, through the two wrap hooks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final

import structlog
from mypy_extensions import mypyc_attr

from guardproxy import problems
from guardproxy.answer import Answer, RefusedError, ResponseAbortedError
from guardproxy.asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext, new_request_id
from guardproxy.outcomes import Outcome
from guardproxy.routes import RouteTable

log: Final = structlog.get_logger(component="guardproxy.chain")


# Guards outside the compiled build (setup.py) subclass it too.
@mypyc_attr(allow_interpreted_subclasses=True)
class Guard:
    """Base class for guards: override only the hooks you need; the chain skips the others."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def readiness_checks(self) -> Mapping[str, Callable[[], dict[str, object]]]:
        """Checks /readyz reports for this guard (a store, a key set), by name: informational,
        so a degraded part with a fallback is news, not a reason to stop traffic."""
        return {}

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        return None

    async def on_request_async(self, scope: Scope, context: RequestContext) -> Answer | None:
        return None

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        return None

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        return None

    def wrap_receive(self, scope: Scope, context: RequestContext, receive: Receive) -> Receive:
        return receive

    def wrap_send(self, scope: Scope, context: RequestContext, send: Send) -> Send:
        return send


def _overrides(guard: Guard, hook: str) -> bool:
    return getattr(type(guard), hook) is not getattr(Guard, hook)


class GuardChain:
    """The proxy's outermost ASGI app: builds the request context, runs the guards, forwards.

    It is also the safety net: whatever goes wrong further in, the client gets an RFC 9457
    problem (before the response has started) or a cut connection (after), never a traceback.
    """

    def __init__(self, app: ASGIApp, *, guards: Sequence[Guard], routes: RouteTable) -> None:
        self.app = app
        self.routes = routes
        self.guards = tuple(guards)
        self._on_request = [g.on_request for g in self.guards if _overrides(g, "on_request")]
        self._on_request_async = [g.on_request_async for g in self.guards if _overrides(g, "on_request_async")]
        self._on_response_start = [
            g.on_response_start for g in reversed(self.guards) if _overrides(g, "on_response_start")
        ]
        self._on_complete = [g.on_complete for g in reversed(self.guards) if _overrides(g, "on_complete")]
        self._wrap_receive = [g.wrap_receive for g in reversed(self.guards) if _overrides(g, "wrap_receive")]
        self._wrap_send = [g.wrap_send for g in reversed(self.guards) if _overrides(g, "wrap_send")]

    async def start(self) -> None:
        for guard in self.guards:
            await guard.start()

    async def aclose(self) -> None:
        for guard in reversed(self.guards):
            await guard.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = self._context(scope)
        for wrap_send in self._wrap_send:
            send = wrap_send(scope, context, send)
        for wrap_receive in self._wrap_receive:
            receive = wrap_receive(scope, context, receive)
        guarded_send = self._guarded(send, context)
        try:
            await self._handle(scope, receive, guarded_send, context)
        except RefusedError as refusal:
            context.outcome = refusal.outcome
            if not context.status:
                await refusal.answer(scope).send(guarded_send)
        except ResponseAbortedError:
            # Returning with the response unfinished makes the server cut the connection.
            return
        except OSError:
            context.outcome = Outcome.CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error", request_id=context.request_id, route=context.route.name)
            context.outcome = Outcome.INTERNAL_ERROR
            if not context.status:
                await Answer.problem(scope, problems.INTERNAL_ERROR, "guardproxy could not handle this request.").send(
                    guarded_send
                )
        finally:
            for on_complete in self._on_complete:
                on_complete(scope, context)

    async def answer_refusal(self, refusal: RefusedError, scope: Scope, send: Send) -> None:
        """Answer a request the server refused before the chain could judge it (a malformed or
        oversized head, a head that came too late). No request hook runs, since nothing in the
        request can be trusted; the answer gets the response hooks (security headers, the
        request ID) and the completion hooks (one access-log line, one count) like any other."""
        context = self._context(scope)
        context.request_id = new_request_id()
        context.outcome = refusal.outcome
        try:
            await refusal.answer(scope).send(self._guarded(send, context))
        except OSError:
            pass  # the client is gone; the outcome stays what the refusal was
        finally:
            for on_complete in self._on_complete:
                on_complete(scope, context)

    def _context(self, scope: Scope) -> RequestContext:
        client = scope.get("client")
        context = RequestContext(
            route=self.routes.match(scope["method"], scope["path"]),
            client_host=client[0] if client else "unknown",
            scheme=scope["scheme"],
        )
        scope[CONTEXT_KEY] = context
        return context

    def _guarded(self, send: Send, context: RequestContext) -> Send:
        """`send` with the response hooks run on the response head, and body bytes counted."""
        response_hooks = self._on_response_start

        # A plain function returning the next send's awaitable: no coroutine of its own per
        # message. A hook's exception still surfaces at the caller's `await send(...)`.
        def guarded_send(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                context.status = message["status"]
                headers = message["headers"]
                for hook in response_hooks:
                    hook(context, headers)
            else:
                context.response_bytes += len(message.get("body", b""))
            return send(message)

        return guarded_send

    def _handle(self, scope: Scope, receive: Receive, send: Send, context: RequestContext) -> Awaitable[None]:
        """The request hooks, then the app (the forwarder) unless a hook answers. A plain
        function handing back what to await: no coroutine of its own per request."""
        for on_request in self._on_request:
            answer = on_request(scope, context)
            if answer is not None:
                return answer.send(send)
        if self._on_request_async:
            return self._handle_async(scope, receive, send, context)
        return self.app(scope, receive, send)

    async def _handle_async(self, scope: Scope, receive: Receive, send: Send, context: RequestContext) -> None:
        for on_request_async in self._on_request_async:
            answer = await on_request_async(scope, context)
            if answer is not None:
                await answer.send(send)
                return
        await self.app(scope, receive, send)
