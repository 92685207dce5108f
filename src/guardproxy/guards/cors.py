"""CORS locked to known origins (checklist item 1), per the Fetch standard.

On a route with CORS configured, guardproxy owns the decision: whatever Access-Control-* headers
the upstream sends are removed, so an upstream that reflects any origin, or sends `*` with
credentials, can never grant a foreign page access. Preflights are answered here and never
forwarded. The traps avoided:
- origin patterns are anchored: `https://*.example.com` matches `https://api.example.com`, not
  `https://example.com.evil.io`, `https://evilexample.com` or `http://api.example.com`;
- `null` (sandboxed frames, file: pages, redirects) is an origin only if listed exactly;
- credentials are never combined with `*` (refused at start), and an allowed origin is echoed,
  never `*`, when credentials are on;
- `Vary: Origin` goes on every response of a CORS route, merged, never duplicated, so no cache
  serves one origin's answer to another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.http1.fields import merge_vary
from guardproxy.origins import SERIALIZED_ORIGIN, compile_origin_pattern
from guardproxy.outcomes import Outcome

_VARY: Final = b"origin"


class CorsPolicy:
    """One route's CORS rules, compiled once."""

    def __init__(
        self,
        *,
        origins: Iterable[str],
        methods: Iterable[str],
        allow_headers: Iterable[str],
        expose_headers: Iterable[str],
        allow_credentials: bool,
        max_age: int,
    ) -> None:
        origins = list(origins)
        self.any_origin = "*" in origins
        if self.any_origin and allow_credentials:
            raise ValueError("'*' cannot be combined with credentials (Fetch standard §3.2.5)")
        compiled = [compile_origin_pattern(origin) for origin in origins if origin != "*"]
        self.exact = frozenset(origin for origin in compiled if isinstance(origin, bytes))
        self.patterns = tuple(origin for origin in compiled if not isinstance(origin, bytes))
        self.methods = frozenset(method.upper() for method in methods)
        self.allow_headers = frozenset(header.lower() for header in allow_headers)
        self.allow_credentials = allow_credentials
        self._methods_value = ", ".join(sorted(self.methods)).encode("ascii")
        self._expose_value = ", ".join(expose_headers).encode("ascii")
        self._max_age = str(max_age).encode("ascii")

    def allows_origin(self, origin: bytes) -> bool:
        origin = origin.lower()
        if origin in self.exact:
            return True
        if origin == b"null" or not SERIALIZED_ORIGIN.fullmatch(origin):
            return False
        return self.any_origin or any(pattern.fullmatch(origin) for pattern in self.patterns)

    def allow_origin_value(self, origin: bytes) -> bytes:
        return b"*" if self.any_origin else origin

    def preflight(self, origin: bytes, method: bytes, requested_headers: bytes) -> Answer | None:
        """The answer to an allowed preflight, or None when it is refused."""
        if method.decode("latin-1").upper() not in self.methods:
            return None
        requested = [name.strip().lower() for name in requested_headers.decode("latin-1").split(",") if name.strip()]
        if any(name not in self.allow_headers for name in requested):
            return None
        headers: Headers = [
            (b"access-control-allow-origin", self.allow_origin_value(origin)),
            (b"access-control-allow-methods", self._methods_value),
            (b"access-control-max-age", self._max_age),
            (b"content-length", b"0"),
        ]
        if requested:
            headers.append((b"access-control-allow-headers", ", ".join(requested).encode("latin-1")))
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        headers.append((b"vary", b"origin, access-control-request-method, access-control-request-headers"))
        return Answer(204, headers)

    def response_headers(self, origin: bytes) -> Headers:
        headers: Headers = [(b"access-control-allow-origin", self.allow_origin_value(origin))]
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if self._expose_value:
            headers.append((b"access-control-expose-headers", self._expose_value))
        return headers


class CorsGuard(Guard):
    def __init__(self, *, policies: Mapping[str, CorsPolicy]) -> None:
        # By route name; a route with none leaves CORS to the upstream.
        self._policies = dict(policies)

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        policy = self._policies.get(context.route.name)
        if policy is None:
            return None
        origins = []
        request_method = request_headers = None
        headers: Headers = scope["headers"]
        for name, value in headers:
            if name == b"origin":
                origins.append(value)
            elif name == b"access-control-request-method":
                request_method = value
            elif name == b"access-control-request-headers":
                request_headers = value if request_headers is None else request_headers + b"," + value
        # Exactly one Origin, and an allowed one; anything else is not a CORS grant.
        origin = origins[0].strip() if len(origins) == 1 else None
        allowed = origin is not None and policy.allows_origin(origin)
        if scope["method"] == "OPTIONS" and origin is not None and request_method is not None:
            answer = policy.preflight(origin, request_method, request_headers or b"") if allowed else None
            if answer is None:
                context.outcome = Outcome.CORS_REFUSED
                return Answer.problem(scope, problems.CORS_REFUSED, "This cross-origin request is not allowed.")
            context.outcome = Outcome.CORS_PREFLIGHT
            return answer
        if allowed and origin is not None:
            context.cors_headers = policy.response_headers(origin)
        return None

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        if context.route.name not in self._policies:
            return
        if context.outcome == Outcome.CORS_PREFLIGHT:
            return  # guardproxy's own complete answer
        headers[:] = [field for field in headers if not field[0].startswith(b"access-control-")]
        headers += context.cors_headers
        merge_vary(headers, _VARY)
