"""Responses guardproxy gives itself instead of forwarding (refusals, redirects, preflight
replies), and the two ways a request ends early: refused, or cut after its response started."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from guardproxy import problems
from guardproxy.asgi import Headers, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.outcomes import Outcome


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
    """Raised in the middle of a request to answer it with a problem instead: by a guard while
    the body streams (413), or by the server when the body breaks (400) or stalls (408). The
    guard chain renders and sends the problem if the response has not started, so it carries
    the request ID and the security headers like every other answer, and it logs the outcome."""

    def __init__(
        self,
        problem: problems.ProblemType,
        detail: str,
        outcome: Outcome,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(outcome)
        self.problem = problem
        self.detail = detail
        self.outcome = outcome
        self.headers = list(headers)

    def answer(self, scope: Scope) -> Answer:
        return Answer.problem(scope, self.problem, self.detail, self.headers)


class ResponseAbortedError(Exception):
    """Forwarding failed after the response had started: the client connection must be cut so a
    truncated body is never taken for a complete one."""
