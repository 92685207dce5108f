"""RFC 9457 problem details: the only shape an error made by guardproxy itself ever has.

`guardproxy.answer.Answer.problem` turns one into a response. Every body is built from fixed
titles and details chosen by the caller; nothing from an exception,
a file path or the upstream's address is ever put into one (checklist items 10-12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from guardproxy.asgi import Headers

PROBLEM_CONTENT_TYPE: Final = b"application/problem+json"
TYPE_PREFIX: Final = "urn:guardproxy:problem:"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A kind of error: a stable machine-readable type, its status and a human title."""

    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


BAD_REQUEST: Final = ProblemType("bad-request", 400, "Bad Request")
REQUEST_TIMEOUT: Final = ProblemType("request-timeout", 408, "Request Timeout")
URI_TOO_LONG: Final = ProblemType("uri-too-long", 414, "URI Too Long")
HEADERS_TOO_LARGE: Final = ProblemType("headers-too-large", 431, "Request Header Fields Too Large")
CONTENT_TOO_LARGE: Final = ProblemType("content-too-large", 413, "Content Too Large")
BAD_PATH: Final = ProblemType("bad-path", 400, "Bad Request")
RATE_LIMITED: Final = ProblemType("rate-limited", 429, "Too Many Requests")
OVERLOADED: Final = ProblemType("overloaded", 503, "Service Unavailable")
CORS_REFUSED: Final = ProblemType("cors-refused", 403, "Forbidden")
GONE: Final = ProblemType("gone", 410, "Gone")
METHOD_NOT_ALLOWED: Final = ProblemType("method-not-allowed", 405, "Method Not Allowed")
MISDIRECTED: Final = ProblemType("misdirected-request", 421, "Misdirected Request")
NOT_IMPLEMENTED: Final = ProblemType("not-implemented", 501, "Not Implemented")
INTERNAL_ERROR: Final = ProblemType("internal-error", 500, "Internal Server Error")
UPSTREAM_UNAVAILABLE: Final = ProblemType("upstream-unavailable", 502, "Bad Gateway")
UPSTREAM_BAD_RESPONSE: Final = ProblemType("upstream-bad-response", 502, "Bad Gateway")
UPSTREAM_TIMEOUT: Final = ProblemType("upstream-timeout", 504, "Gateway Timeout")
UPSTREAM_BUSY: Final = ProblemType("upstream-busy", 503, "Service Unavailable")
# Every upstream endpoint is out of the balancing (circuit open, or held back by its Retry-After).
UPSTREAM_CIRCUIT_OPEN: Final = ProblemType("upstream-circuit-open", 503, "Service Unavailable")
# draft-ietf-httpapi-idempotency-key-header §2.7: a missing or malformed key, a request with
# the key still in flight, a key reused with another payload; and the key store being down.
IDEMPOTENCY_KEY_MISSING: Final = ProblemType("idempotency-key-missing", 400, "Bad Request")
IDEMPOTENCY_KEY_MALFORMED: Final = ProblemType("idempotency-key-malformed", 400, "Bad Request")
IDEMPOTENCY_CONFLICT: Final = ProblemType("idempotency-conflict", 409, "Conflict")
IDEMPOTENCY_MISMATCH: Final = ProblemType("idempotency-mismatch", 422, "Unprocessable Content")
IDEMPOTENCY_UNAVAILABLE: Final = ProblemType("idempotency-unavailable", 503, "Service Unavailable")
# Edge authentication (guards/auth): 401 and 403 carry WWW-Authenticate (RFC 6750 §3).
UNAUTHORIZED: Final = ProblemType("unauthorized", 401, "Unauthorized")
INSUFFICIENT_SCOPE: Final = ProblemType("insufficient-scope", 403, "Forbidden")
ACCESS_DENIED: Final = ProblemType("access-denied", 403, "Forbidden")
ADDRESS_REFUSED: Final = ProblemType("address-refused", 403, "Forbidden")
AUTH_UNAVAILABLE: Final = ProblemType("auth-unavailable", 503, "Service Unavailable")
# Upgrade handshakes (guards/websocket.py): malformed (RFC 6455 §4.2.1), or from a refused Origin.
BAD_HANDSHAKE: Final = ProblemType("bad-handshake", 400, "Bad Request")
ORIGIN_REFUSED: Final = ProblemType("origin-refused", 403, "Forbidden")


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
