"""RFC 9457 problem details: the only shape an error made by guardproxy itself ever has.

Every body is built from fixed titles and details chosen by the caller; nothing from an exception,
a file path or the upstream's address is ever put into one (checklist items 10-12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from guardproxy.asgi import Headers, Scope, Send
from guardproxy.context import context_of

PROBLEM_CONTENT_TYPE = b"application/problem+json"
TYPE_PREFIX = "urn:guardproxy:problem:"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A kind of error: a stable machine-readable type, its status and a human title."""

    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


BAD_REQUEST = ProblemType("bad-request", 400, "Bad Request")
NOT_IMPLEMENTED = ProblemType("not-implemented", 501, "Not Implemented")
INTERNAL_ERROR = ProblemType("internal-error", 500, "Internal Server Error")
UPSTREAM_UNAVAILABLE = ProblemType("upstream-unavailable", 502, "Bad Gateway")
UPSTREAM_BAD_RESPONSE = ProblemType("upstream-bad-response", 502, "Bad Gateway")
UPSTREAM_TIMEOUT = ProblemType("upstream-timeout", 504, "Gateway Timeout")
UPSTREAM_BUSY = ProblemType("upstream-busy", 503, "Service Unavailable")


def render_problem(
    problem: ProblemType,
    detail: str,
    *,
    request_id: str | None = None,
    instance: str | None = None,
) -> bytes:
    body: dict[str, object] = {
        "type": problem.uri,
        "title": problem.title,
        "status": problem.status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def problem_head(body: bytes, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> Headers:
    return [
        (b"content-type", PROBLEM_CONTENT_TYPE),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
        *extra_headers,
    ]


async def send_problem(
    scope: Scope,
    send: Send,
    problem: ProblemType,
    detail: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer the request in `scope` with a problem response.

    The path is the request's own (never its query string, which may carry secrets) and the
    request ID ties the response to the log lines about it.
    """
    context = context_of(scope)
    extra = list(headers)
    if context is not None:
        context.status = problem.status
        if context.request_id:
            extra.append((b"x-request-id", context.request_id.encode("ascii")))
    body = render_problem(
        problem,
        detail,
        request_id=context.request_id if context is not None else None,
        instance=scope.get("path"),
    )
    await send(
        {"type": "http.response.start", "status": problem.status, "headers": problem_head(body, extra)}
    )
    await send({"type": "http.response.body", "body": body})
