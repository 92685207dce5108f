"""Load shedding (checklist item 24): past `max_in_flight` requests in this worker, answer 503
at once, without touching the upstream, so an overload costs the client a retry instead of
costing everyone a queue."""

from __future__ import annotations

from typing import Final

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.outcomes import Outcome

_RETRY_AFTER: Final = [(b"retry-after", b"1")]


class ConcurrencyGuard(Guard):
    def __init__(self, *, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        if self.in_flight >= self.max_in_flight:
            context.outcome = Outcome.SHED
            return Answer.problem(
                scope, problems.OVERLOADED, "Too many requests are in progress; retry shortly.", _RETRY_AFTER
            )
        self.in_flight += 1
        context.admitted = True
        return None

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        if context.admitted:
            self.in_flight -= 1
