"""Forward auth (Traefik ForwardAuth, nginx `auth_request`): ask an auth service about each request.

The call goes through guardproxy's own keep-alive HTTP/1.1 pool (proxy/pool.py, the one the
forwarder uses), not httpx: measured here, httpx.AsyncClient answered ~110 forward-auth
requests/s at 64 concurrent clients (its pool under concurrency, DESIGN.md), where the raw pool
keeps up with the proxy itself (bench/auth_cost.py). The auth service gets a GET with
X-Forwarded-Method/-Uri/-Host/-Proto/-For, X-Request-ID and the configured credential headers;
2xx allows (selected answer headers go upstream), 401/403 is passed back (the service's own
problem body if it sent one), and anything else, including no answer within the timeout, fails
closed with 503. The optional positive-answer cache removes the call for a repeated credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Scope
from guardproxy.context import RequestContext
from guardproxy.proxy.errors import UpstreamError
from guardproxy.proxy.pool import ConnectionPool, Origin, PooledResponse
from guardproxy.proxy.transport import UpstreamRequest

log = structlog.get_logger(component="guardproxy.auth.forward")

ALLOWED, DENIED, UNAVAILABLE, CACHED = "valid", "denied", "unavailable", "valid_cached"
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
        self._subject_name = self.subject_header.encode("latin-1") if self.subject_header else b""
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.max_connections = max_connections
        self._clock = clock
        self._cache: dict[bytes, Allowed] = {}
        parts = urlsplit(url)
        assert parts.hostname is not None  # guaranteed by ForwardAuthSettings' validation
        self._origin = Origin(parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self._target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode("latin-1")
        self._pool: ConnectionPool | None = None

    async def start(self) -> None:
        context = None
        if self._origin.scheme == "https":
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
        self._pool = ConnectionPool(
            self._origin,
            max_connections=self.max_connections,
            max_idle_connections=self.max_connections,
            idle_timeout=30.0,
            ssl_context=context,
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()

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
        assert self._pool is not None
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        headers: Headers = [
            (b"host", self._origin.authority),
            *credentials,
            (b"x-forwarded-method", scope["method"].encode("latin-1")),
            (b"x-forwarded-uri", target),
            (b"x-forwarded-proto", context.scheme.encode("latin-1")),
            (b"x-forwarded-for", context.client_host.encode("latin-1")),
        ]
        if context.host:
            headers.append((b"x-forwarded-host", context.host))
        if context.request_id:
            headers.append((b"x-request-id", context.request_id.encode("ascii")))
        request = UpstreamRequest(
            method=b"GET",
            target=self._target,
            headers=headers,
            body=None,
            content_length=None,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
        )
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._pool.send(request)
                try:
                    status = response.status
                    body = await _read_body(response)
                finally:
                    response.close()
        except (UpstreamError, TimeoutError) as exc:
            reason = exc.kind if isinstance(exc, UpstreamError) else "timeout"
            log.warning("forward auth failed", reason=reason, request_id=context.request_id)
            return UNAVAILABLE, _unavailable(scope)
        if 200 <= status < 300:
            return ALLOWED, self._allowed(key, response.headers)
        if status in (401, 403):
            return DENIED, self._denied(scope, status, response.headers, body)
        log.warning("forward auth answered unexpectedly", status=status, request_id=context.request_id)
        return UNAVAILABLE, _unavailable(scope)

    def _allowed(self, key: bytes, headers: Headers) -> Allowed:
        wanted = self.response_headers
        copied = tuple((name, value) for name, value in headers if name.decode("latin-1") in wanted)
        subject = ""
        if self.subject_header is not None:
            subject = next((v.decode("latin-1") for n, v in headers if n == self._subject_name), "")
        allowed = Allowed(copied, subject, self._clock() + self.cache_ttl)
        if key:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = allowed
        return allowed

    def _denied(self, scope: Scope, status: int, headers: Headers, body: bytes | None) -> Answer:
        challenge: Headers = [(name, value) for name, value in headers if name == b"www-authenticate"]
        content_type = next((value for name, value in headers if name == b"content-type"), b"")
        if body is not None and content_type.startswith(b"application/problem+json"):
            return Answer(status, problems.problem_head(body, challenge), body)
        problem = problems.UNAUTHORIZED if status == 401 else problems.ACCESS_DENIED
        detail = "Authentication is required." if status == 401 else "Access to this resource is denied."
        return Answer.problem(scope, problem, detail, challenge)


async def _read_body(response: PooledResponse) -> bytes | None:
    """The answer's body, or None past MAX_PROBLEM_BYTES (the connection is then not reused)."""
    body = bytearray()
    while not response.finished:
        body += await response.read_chunk()
        if len(body) > MAX_PROBLEM_BYTES:
            return None
    return bytes(body)


def _unavailable(scope: Scope) -> Answer:
    return Answer.problem(
        scope, problems.AUTH_UNAVAILABLE, "Authentication cannot be checked right now.", [(b"retry-after", b"1")]
    )
