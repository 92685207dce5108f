"""Responses guardproxy gives itself instead of forwarding: refusals, redirects, preflight replies."""

from __future__ import annotations

from dataclasses import dataclass, field

from guardproxy import problems
from guardproxy.asgi import Headers, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext


@dataclass(frozen=True, slots=True)
class Answer:
    """A response guardproxy gives itself instead of forwarding the request."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def problem(
        cls, scope: Scope, problem: problems.ProblemType, detail: str, headers: Headers | None = None
    ) -> Answer:
        context: RequestContext | None = scope.get(CONTEXT_KEY)
        body = problems.render_problem(
            problem, detail, request_id=context.request_id if context else None, instance=scope.get("path")
        )
        return cls(problem.status, problems.problem_head(body, headers or []), body)

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        await send({"type": "http.response.body", "body": self.body})


class RefusedError(Exception):
    """Raised by a guard in the middle of a request (e.g. while the body streams) to answer it
    with `answer` instead; the guard chain sends it if the response has not started."""

    def __init__(self, answer: Answer, outcome: str) -> None:
        super().__init__(outcome)
        self.answer = answer
        self.outcome = outcome
