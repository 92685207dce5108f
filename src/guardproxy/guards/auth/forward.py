"""Forward auth (Traefik ForwardAuth, nginx `auth_request`): ask an auth service about each request.

The call goes through httpx.AsyncClient with a keep-alive pool. That is acceptable here although
the forwarding path must not use httpx (DESIGN.md: its pool overhead caps throughput): only
routes that name `forward` make the call, each such request already costs a whole extra HTTP
exchange with another service, and the optional positive-answer cache removes the call for a
repeated credential. The auth service gets a GET with X-Forwarded-Method/-Uri/-Host/-Proto/-For,
X-Request-ID and the configured credential headers; 2xx allows (selected answer headers go
upstream), 401/403 is passed back (the service's own problem body if it sent one), and anything
else, including no answer within the timeout, fails closed with 503.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext

log = structlog.get_logger(component="guardproxy.auth.forward")

ALLOWED, DENIED, UNAVAILABLE, CACHED = "valid", "denied", "unavailable", "valid_cached"
FORWARD_RESULTS = (ALLOWED, DENIED, UNAVAILABLE, CACHED)
# An auth service's own problem body is passed back up to this size; past it, ours is sent.
MAX_PROBLEM_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Allowed:
    headers: tuple[tuple[bytes, bytes], ...]
    subject: str
    expires: float = 0.0


class ForwardAuth:
    def __init__(
        self,
        *,
        url: str,
        timeout: float,
        request_headers: Sequence[str],
        response_headers: Sequence[str],
        subject_header: str | None,
        cache_ttl: float,
        cache_size: int,
        max_connections: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.request_headers = frozenset(name.lower().encode("latin-1") for name in request_headers)
        self.response_headers = tuple(name.lower() for name in response_headers)
        self.subject_header = subject_header.lower() if subject_header else None
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.max_connections = max_connections
        self._clock = clock
        self._cache: dict[bytes, Allowed] = {}
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def _credentials(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        return [(name, value) for name, value in scope["headers"] if name in self.request_headers]

    def _cache_key(self, route: str, credentials: list[tuple[bytes, bytes]]) -> bytes:
        digest = hashlib.sha256(route.encode())
        for name, value in credentials:
            digest.update(b"\0" + name + b"\0" + value)
        return digest.digest()

    async def check(self, scope: Scope, context: RequestContext) -> tuple[str, Allowed | Answer]:
        """(result, Allowed) to let the request through, or (result, the answer to send)."""
        credentials = self._credentials(scope)
        key = self._cache_key(context.route.name, credentials) if self.cache_ttl else b""
        if key:
            cached = self._cache.get(key)
            if cached is not None and cached.expires > self._clock():
                return CACHED, cached
        assert self._client is not None
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in credentials]
        headers += [
            ("x-forwarded-method", scope["method"]),
            ("x-forwarded-uri", target.decode("latin-1")),
            ("x-forwarded-proto", context.scheme),
            ("x-forwarded-for", context.client_host),
        ]
        if context.host:
            headers.append(("x-forwarded-host", context.host.decode("latin-1")))
        if context.request_id:
            headers.append(("x-request-id", context.request_id))
        try:
            async with self._client.stream("GET", self.url, headers=headers) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return ALLOWED, self._allowed(key, response)
                if status in (401, 403):
                    return DENIED, await self._denied(scope, response)
        except httpx.HTTPError as exc:
            log.warning("forward auth failed", reason=exc.__class__.__name__, request_id=context.request_id)
            return UNAVAILABLE, _unavailable(scope)
        log.warning("forward auth answered unexpectedly", status=status, request_id=context.request_id)
        return UNAVAILABLE, _unavailable(scope)

    def _allowed(self, key: bytes, response: httpx.Response) -> Allowed:
        copied = tuple(
            (name.encode("latin-1"), value.encode("latin-1"))
            for name in self.response_headers
            for value in response.headers.get_list(name)
        )
        subject = response.headers.get(self.subject_header, "") if self.subject_header else ""
        allowed = Allowed(copied, subject, self._clock() + self.cache_ttl)
        if key:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = allowed
        return allowed

    async def _denied(self, scope: Scope, response: httpx.Response) -> Answer:
        status = response.status_code
        challenge: Headers = [
            (b"www-authenticate", value.encode("latin-1")) for value in response.headers.get_list("www-authenticate")
        ]
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_PROBLEM_BYTES:
                    break
            else:
                return Answer(status, problems.problem_head(bytes(body), challenge), bytes(body))
        problem = problems.UNAUTHORIZED if status == 401 else problems.ACCESS_DENIED
        detail = "Authentication is required." if status == 401 else "Access to this resource is denied."
        return Answer.problem(scope, problem, detail, challenge)


def _unavailable(scope: Scope) -> Answer:
    return Answer.problem(
        scope, problems.AUTH_UNAVAILABLE, "Authentication cannot be checked right now.", [(b"retry-after", b"1")]
    )
