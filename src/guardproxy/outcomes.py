"""How a request ended: one name per way, shared by the access log, the metrics, the alert rules
and the docs (tests/unit/test_outcomes.py holds the last three to this list).

The values are the strings that appear in log lines and in the `outcome` label, so they are
part of guardproxy's interface: rename one and every dashboard that filters on it breaks.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Outcome(StrEnum):
    # Forwarded, and the upstream's response (whatever its status) went out whole.
    OK = "ok"
    # The client hung up before its response was complete.
    CLIENT_CLOSED = "client_closed"
    # guardproxy itself failed; the client got a 500 problem or a cut connection.
    INTERNAL_ERROR = "internal_error"

    # Refused by the server before any guard ran: the request's bytes could not be trusted.
    MALFORMED = "malformed"  # 400
    HEAD_TIMEOUT = "head_timeout"  # 408: the request head did not arrive in time
    URI_TOO_LONG = "uri_too_long"  # 414
    HEAD_TOO_LARGE = "head_too_large"  # 431
    UNSUPPORTED_CODING = "unsupported_coding"  # 501: a transfer coding other than chunked
    BODY_TIMEOUT = "body_timeout"  # 408: the request body stopped arriving
    BAD_HOST = "bad_host"  # 400: no Host on HTTP/1.1, several, or one that is no host[:port]

    # Refused or answered by a guard.
    REFUSED_HOST = "refused_host"
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405: a refused method, or one its route does not allow
    SERVER_OPTIONS = "server_options"  # `OPTIONS *`, answered by guardproxy for the whole server
    CORS_REFUSED = "cors_refused"
    CORS_PREFLIGHT = "cors_preflight"
    HTTPS_REDIRECT = "https_redirect"
    SHED = "shed"
    BAD_PATH = "bad_path"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    GONE = "gone"  # 410: a route past its sunset date, with gone_after_sunset set

    # Edge authentication (guards/auth/).
    UNAUTHORIZED = "unauthorized"  # 401: no valid credentials
    FORBIDDEN = "forbidden"  # 403: valid credentials without the scope or claim the route needs
    IP_REFUSED = "ip_refused"  # 403: the client address is not allowed on the route
    AUTH_UNAVAILABLE = "auth_unavailable"  # 503: no keys, or the forward-auth service failed

    # Idempotency-Key (guards/idempotency.py).
    IDEMPOTENT_REPLAY = "idempotent_replay"  # the stored response was replayed, never forwarded
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"  # 409: the same key is still in flight
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"  # 422: the key was used with another request
    IDEMPOTENCY_MISSING_KEY = "idempotency_missing_key"  # 400: the route requires a key
    IDEMPOTENCY_MALFORMED_KEY = "idempotency_malformed_key"  # 400
    IDEMPOTENCY_UNAVAILABLE = "idempotency_unavailable"  # 503: the store is down, fail_mode refuse

    # WebSocket and other upgrade handshakes (guards/websocket.py).
    BAD_HANDSHAKE = "bad_handshake"  # 400: no or a bad Sec-WebSocket-Key, version not 13, a body
    ORIGIN_REFUSED = "origin_refused"  # 403: the handshake's Origin is not allowed on the route
    TUNNEL_LIMIT = "tunnel_limit"  # 503: the route's open tunnels are at websocket.max_tunnels
    DRAINING = "draining"  # 503: a handshake while the worker drains

    # The upstream could not give an answer.
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_BUSY = "upstream_busy"
    UPSTREAM_CIRCUIT_OPEN = "upstream_circuit_open"  # 503: every endpoint out (breaker, Retry-After)


# Refusals a client earns by sending what it should not: each also gets an audit line of its own.
SECURITY_OUTCOMES: Final = frozenset(
    {
        Outcome.REFUSED_HOST,
        Outcome.METHOD_NOT_ALLOWED,
        Outcome.CORS_REFUSED,
        Outcome.TOO_LARGE,
        Outcome.BAD_PATH,
        Outcome.SHED,
        Outcome.RATE_LIMITED,
        Outcome.UNAUTHORIZED,
        Outcome.FORBIDDEN,
        Outcome.IP_REFUSED,
        Outcome.AUTH_UNAVAILABLE,
        Outcome.ORIGIN_REFUSED,
    }
)

# The server's own refusals, before the guard chain could judge the request.
PROTOCOL_OUTCOMES: Final = frozenset(
    {
        Outcome.MALFORMED,
        Outcome.HEAD_TIMEOUT,
        Outcome.URI_TOO_LONG,
        Outcome.HEAD_TOO_LARGE,
        Outcome.UNSUPPORTED_CODING,
        Outcome.BAD_HOST,
    }
)
