"""Request body size limit, per route (checklist item 19).

A declared Content-Length over the limit is refused before a byte of the body is read (and the
client gets no 100 Continue). A chunked body is counted as it streams and cut the moment it
passes the limit: the upstream sees its request end unfinished, never a complete one.
"""

from __future__ import annotations

from typing import Final

from guardproxy import problems
from guardproxy.answer import Answer, RefusedError
from guardproxy.asgi import Headers, Message, Receive, Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome

_DETAIL: Final = "The request body is larger than this endpoint accepts."


class BodyLimitGuard(Guard):
    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        limit = context.route.max_body_bytes
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == b"content-length" and int(value) > limit:
                context.outcome = Outcome.TOO_LARGE
                return Answer.problem(scope, problems.CONTENT_TOO_LARGE, _DETAIL)
        return None

    def wrap_receive(self, scope: Scope, context: RequestContext, receive: Receive) -> Receive:
        limit = context.route.max_body_bytes
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise RefusedError(problems.CONTENT_TOO_LARGE, _DETAIL, Outcome.TOO_LARGE)
            return message

        return counting_receive
