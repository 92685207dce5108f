"""The audit's client: every request a probe sends goes through here, so the budgets hold.

httpx for ordinary requests (tooling, not the hot path), `wire` for the raw ones. A session
counts requests against a fixed budget, paces them (the audit must never be a load test), caps
the bytes it reads, and turns every failure into evidence instead of an exception.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import httpx

from guardproxy.audit.evidence import MAX_BODY_BYTES, Exchange
from guardproxy.audit.wire import Endpoint, send_raw

# Methods that never change anything on a well-behaved server (RFC 9110 §9.2.1); others only
# when the operator allows them with --method.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class Target:
    """The URL under audit, split into what raw requests need."""

    url: str
    scheme: str
    host: str
    port: int
    authority: str  # the Host header value for this URL
    target: str  # path and query, the request-target

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"invalid port in {url!r}") from None
        if "@" in parts.netloc:
            raise ValueError("the URL must not carry credentials: pass them with --header")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.scheme, parts.hostname, port, parts.netloc, target)

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    def with_path(self, target: str) -> str:
        return self.origin + target


@dataclass(frozen=True)
class Bounds:
    """How far the probes that measure a limit may go; every one is finite."""

    burst: int = 50  # requests the rate-limit probe sends at most
    slow_head_seconds: float = 12.0  # how long a head is dripped (guardproxy's deadline is 10 s)
    drip_interval: float = 1.0  # seconds between dripped header lines
    declared_body: int = 100 * 1024 * 1024  # the Content-Length the body-limit probe declares
    sent_body: int = 64 * 1024  # the bytes of it actually sent
    body_wait: float = 3.0  # seconds to wait for a refusal after sending them


class RequestBudget:
    """At most `limit` requests, started no faster than `rate` per second."""

    def __init__(self, limit: int, rate: float) -> None:
        self.limit = limit
        self.used = 0
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def take(self) -> bool:
        async with self._lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)
        return True


class Session:
    def __init__(
        self,
        target: Target,
        *,
        headers: Sequence[tuple[str, str]] = (),
        methods: Iterable[str] = (),
        max_requests: int = 200,
        rate: float = 100.0,
        timeout: float = 5.0,
        verify_tls: bool = True,
        bounds: Bounds | None = None,
    ) -> None:
        self.target = target
        self.bounds = bounds or Bounds()
        # A Host given with --header (auditing an address for a virtual host) replaces the URL's.
        self.authority = next((value for name, value in headers if name.lower() == "host"), target.authority)
        self.extra_headers = [(name, value) for name, value in headers if name.lower() != "host"]
        self.methods = SAFE_METHODS | {method.upper() for method in methods}
        self.budget = RequestBudget(max_requests, rate)
        self.timeout = timeout
        tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            tls = ssl.create_default_context()
            if not verify_tls:
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        self.endpoint = Endpoint(target.host, target.port, tls, target.host)
        self._client = httpx.AsyncClient(
            verify=tls if tls is not None else True,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # One connection per request: a probe's answer must not depend on the one before it.
            limits=httpx.Limits(max_keepalive_connections=0),
            trust_env=False,
        )

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._client.aclose()

    def allows(self, method: str) -> bool:
        return method.upper() in self.methods

    async def request(
        self,
        method: str,
        target: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        *,
        label: str | None = None,
        absolute: str | None = None,
    ) -> Exchange:
        """One request with the operator's --header fields plus `headers` (which win); to
        `target` on the audited origin, or to the `absolute` URL."""
        method = method.upper()
        if not self.allows(method):
            raise ValueError(f"{method} is not allowed in this audit (see --method)")
        path = target or self.target.target
        label = label or f"{method} {path}"
        if not await self.budget.take():
            return Exchange(label, error="request budget spent")
        names = {name.lower() for name, _ in headers}
        fields = [(k, v) for k, v in self.extra_headers if k.lower() not in names]
        if "host" not in names and self.authority != self.target.authority:
            fields.append(("Host", self.authority))
        if "accept-encoding" not in names:
            fields.append(("Accept-Encoding", "identity"))  # bodies as sent, for the body checks
        fields += list(headers)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout * 2):
                url = absolute or self.target.with_path(path)
                request = self._client.build_request(method, url, headers=fields)
                response = await self._client.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk[: MAX_BODY_BYTES - len(body)]
                        if len(body) >= MAX_BODY_BYTES:
                            break
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError, OSError, ssl.SSLError) as exc:
            return Exchange(label, error=describe_error(exc, self.timeout), elapsed=time.monotonic() - started)
        return Exchange(
            label,
            status=response.status_code,
            headers=tuple(response.headers.multi_items()),
            body=bytes(body),
            elapsed=time.monotonic() - started,
        )

    async def raw(self, data: bytes, label: str, *, timeout: float | None = None) -> Exchange:
        if not await self.budget.take():
            return Exchange(label, error="request budget spent")
        return await send_raw(self.endpoint, data, label, timeout=timeout or self.timeout)

    def head(
        self,
        method: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        target: str | None = None,
        host: str | None = None,
    ) -> bytes:
        """A request head in raw bytes, with the operator's --header fields."""
        lines = [f"{method} {target or self.target.target} HTTP/1.1", f"Host: {host or self.authority}"]
        lines += [f"{name}: {value}" for name, value in self.extra_headers]
        lines += [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def describe_error(exc: BaseException, timeout: float) -> str:
    """A failure in words an operator can act on (never a traceback)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, httpx.ConnectError):
        return _connect_failure(exc)
    if isinstance(exc, httpx.ReadTimeout | TimeoutError):
        return f"connected, but no answer within {timeout:g} s"
    if isinstance(exc, httpx.RemoteProtocolError):
        text = str(exc)
        if "disconnected" in text.lower():
            return "closed the connection without an answer"
        return "answered with bytes that are not HTTP/1.x"
    return f"{type(exc).__name__}: {exc}"


def _connect_failure(exc: httpx.ConnectError) -> str:
    causes = list(_causes(exc))
    if any(isinstance(cause, ssl.SSLError) for cause in causes):
        return f"TLS failed: {exc}"
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return "connection refused"
    return f"cannot connect: {exc}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it was raised from, down the chain (httpx wraps the OS error twice)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
