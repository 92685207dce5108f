"""Per-request state that guards share, carried in the ASGI scope.

One small object per request instead of loose scope keys: every guard reads and writes named,
typed fields, and the forwarder turns them into the upstream request in a single pass.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Final

from guardproxy.outcomes import Outcome

# A real import, not one under TYPE_CHECKING: the compiled build needs the class at import time
# (setup.py).
from guardproxy.routes import RoutePolicy

CONTEXT_KEY: Final = "guardproxy.context"

# IDs must be unique, not secret: a Mersenne Twister seeded from the OS is unique enough and
# costs no system call per request (os.urandom would cost three).
_random: Final = random.Random()  # noqa: S311
random_bits: Final = _random.getrandbits


def new_request_id() -> str:
    # 32 hex digits; to_bytes().hex() is a third of "%032x" formatting's cost.
    return random_bits(128).to_bytes(16).hex()


class RequestContext:
    """One per request. Not a dataclass: its generated __init__ would set every field, and it runs
    as interpreted code even in the compiled build (setup.py); here a request pays for the four
    fields it sets, the rest are class-level defaults (immutable values only), which the compiled
    build sets in C. A new field is one annotated line with its default, as before."""

    route: RoutePolicy
    client_host: str
    # The scheme the client used: the listener's, or what a trusted proxy in front reported.
    scheme: str = "http"
    # True when `scheme` came from a trusted proxy's X-Forwarded-Proto or Forwarded header.
    scheme_from_proxy: bool = False
    # The host the client asked for (Host, or X-Forwarded-Host from a trusted proxy), lower-case.
    host: bytes = b""
    # The X-Forwarded-For value for the upstream: the trusted chain plus the peer address.
    forwarded_for: bytes = b""
    # True when the peer is a trusted proxy: its identity and URL fields are kept, not stripped.
    peer_trusted: bool = False
    # Set by __init__: when the request started (time.perf_counter).
    started_at: float = 0.0
    request_id: str = ""
    # W3C trace context to send upstream; empty when the request carries none we can continue.
    traceparent: bytes = b""
    tracestate: bytes = b""
    # How the exchange ended, for logs and metrics: ok, or the guard or failure that ended it.
    outcome: Outcome = Outcome.OK
    # The response status once the response has started; 0 before.
    status: int = 0
    # Counted against the in-flight limit (and to be released when the request ends).
    admitted: bool = False
    # RateLimit-Policy and RateLimit fields for this response, when a rule counted the request.
    rate_limit_headers: Sequence[tuple[bytes, bytes]] = ()
    # The CORS grant for this response, decided from the request's Origin.
    cors_headers: Sequence[tuple[bytes, bytes]] = ()
    # For the access log: body bytes received and sent (before compression), and the time the
    # upstream took to answer with its response head.
    request_bytes: int = 0
    response_bytes: int = 0
    upstream_seconds: float = 0.0
    # Attempts made upstream (retries included) and the endpoint of the last one (with several
    # endpoints, proxy/resilient.py); for the access log.
    upstream_attempts: int = 0
    upstream_endpoint: str = ""
    # Who the request was authenticated as (guards/auth): the token's `sub`, the API key's name
    # or the forward-auth service's answer; the verified claims; the API key's name.
    subject: str = ""
    claims: Mapping[str, object] | None = None
    api_key_name: str = ""

    def __init__(self, route: RoutePolicy, client_host: str, scheme: str = "http") -> None:
        self.route = route
        self.client_host = client_host
        self.scheme = scheme
        self.started_at = time.perf_counter()
