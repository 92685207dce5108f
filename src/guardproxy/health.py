"""Readiness: a periodic, cheap probe of each upstream endpoint, and the drain switch.

Each check's latest result is kept so `/readyz` answers from memory: a probe storm from the
platform must not turn into a request storm on the upstream. Every endpoint is probed (a TCP
connect, or `GET path` wanting `expected_status` or any status below 500); `unhealthy_after`
failed probes in a row take it out of the balancing and `healthy_after` passed ones bring it
back (the first probe decides at once). A passing probe of a healthy endpoint also ends its
open circuit's wait (the next request probes it), so a restarted upstream is back within a
check interval rather than after the breaker's `open_for`. The proxy is ready while at least
one endpoint is healthy, and `/readyz` lists each endpoint's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from guardproxy.config import HealthCheckSettings, UpstreamSettings
from guardproxy.proxy.endpoints import Endpoint, EndpointTarget
from guardproxy.server.limits import Lifecycle
from guardproxy.upstream import endpoint_targets, origin_of, upstream_ssl_context

log = structlog.get_logger(component="guardproxy.health")


@dataclass(slots=True)
class CheckResult:
    ok: bool
    detail: str
    checked_at: float

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "checked_at": round(self.checked_at, 3)}


class EndpointHealth:
    """One endpoint's probe results and the verdict its thresholds give."""

    def __init__(self, target: EndpointTarget, settings: HealthCheckSettings, endpoint: Endpoint | None) -> None:
        self.target = target
        self._settings = settings
        self._endpoint = endpoint
        self.healthy: bool | None = None  # None: not probed yet
        self._streak = 0  # probes in a row that disagree with the verdict
        self.result = CheckResult(ok=False, detail="not checked yet", checked_at=0.0)

    def record(self, ok: bool, detail: str) -> None:
        self.result = CheckResult(ok=ok, detail=detail, checked_at=time.time())
        if self.healthy is None or ok == self.healthy:
            changed = self.healthy is None and not ok
            self.healthy, self._streak = ok, 0
        else:
            self._streak += 1
            needed = self._settings.healthy_after if ok else self._settings.unhealthy_after
            changed = self._streak >= needed
            if changed:
                self.healthy, self._streak = ok, 0
        if changed:
            log.warning("upstream endpoint health changed", endpoint=self.target.name, healthy=ok, detail=detail)
        if self._endpoint is not None:
            self._endpoint.healthy = bool(self.healthy)
            if ok and self.healthy:
                self._endpoint.check_passed()

    def as_json(self) -> dict[str, object]:
        state = self._endpoint.state(time.monotonic()) if self._endpoint is not None else None
        return {
            "name": self.target.name,
            "ok": bool(self.healthy),
            "state": state or ("healthy" if self.healthy else "unhealthy"),
            "detail": self.result.detail,
        }


class Readiness:
    def __init__(
        self, upstream: UpstreamSettings, lifecycle: Lifecycle, endpoints: Sequence[Endpoint] | None = None
    ) -> None:
        self._settings = upstream.health_check
        self._ssl: ssl.SSLContext | None = upstream_ssl_context(upstream)
        by_name = {endpoint.name: endpoint for endpoint in endpoints or ()}
        self.endpoints = [
            EndpointHealth(target, self._settings, by_name.get(target.name)) for target in endpoint_targets(upstream)
        ]
        self.upstream = CheckResult(ok=False, detail="not checked yet", checked_at=0.0)
        self._lifecycle = lifecycle
        self._task: asyncio.Task[None] | None = None
        self._informational: dict[str, Callable[[], dict[str, object]]] = {}
        self._client: httpx.AsyncClient | None = None
        # The loaded configuration's hash and load time, shown on /readyz (set by the runtime).
        self.config: dict[str, object] | None = None

    @property
    def ready(self) -> bool:
        return self.upstream.ok and not self._lifecycle.draining

    def inform(self, name: str, report: Callable[[], dict[str, object]]) -> None:
        """Adds a check that /readyz reports but that never makes the proxy unready: a degraded
        part with a working fallback (the rate-limit store) is news, not a reason to stop traffic."""
        self._informational[name] = report

    def report(self) -> dict[str, object]:
        upstream = self.upstream.as_json()
        upstream["endpoints"] = [endpoint.as_json() for endpoint in self.endpoints]
        checks: dict[str, object] = {"upstream": upstream}
        checks.update((name, report()) for name, report in self._informational.items())
        report: dict[str, object] = {
            "status": "ready" if self.ready else "not_ready",
            "draining": self._lifecycle.draining,
            "checks": checks,
        }
        if self.config is not None:
            report["config"] = self.config
        return report

    async def start(self) -> None:
        if self._settings.path is not None:
            self._client = httpx.AsyncClient(
                verify=self._ssl if self._ssl is not None else True,
                timeout=self._settings.timeout,
                follow_redirects=False,
            )
        await self.check_once()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def check_once(self) -> None:
        results = await asyncio.gather(*(self._probe(endpoint.target) for endpoint in self.endpoints))
        for endpoint, (ok, detail) in zip(self.endpoints, results, strict=True):
            endpoint.record(ok, detail)
        healthy = sum(1 for endpoint in self.endpoints if endpoint.healthy)
        ok = healthy > 0
        several = len(self.endpoints) > 1
        detail = f"{healthy} of {len(self.endpoints)} endpoints healthy" if several else results[0][1]
        if ok != self.upstream.ok:
            log.info("upstream readiness changed", ready=ok, detail=detail)
        self.upstream = CheckResult(ok=ok, detail=detail, checked_at=time.time())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval)
            await self.check_once()

    async def _probe(self, target: EndpointTarget) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._settings.timeout):
                if self._client is not None:
                    response = await self._client.get(target.url.rstrip("/") + (self._settings.path or ""))
                    expected = self._settings.expected_status
                    passed = response.status_code in expected if expected else response.status_code < 500
                    return passed, f"health path answered {response.status_code}"
                origin = origin_of(target.url)
                _, writer = await asyncio.open_connection(
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
                return True, "connection accepted"
        except TimeoutError:
            return False, "timed out"
        except (OSError, ssl.SSLError, httpx.HTTPError) as exc:
            return False, f"unreachable ({exc.__class__.__name__})"
