"""Readiness: a periodic, cheap probe of the upstream, and the drain switch.

Each check's latest result is kept so `/readyz` answers from memory: a probe storm from the
platform must not turn into a request storm on the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog

from guardproxy.config import UpstreamSettings
from guardproxy.server.limits import Lifecycle
from guardproxy.upstream import upstream_origin, upstream_ssl_context

log = structlog.get_logger(component="guardproxy.health")


@dataclass(slots=True)
class CheckResult:
    ok: bool
    detail: str
    checked_at: float

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail, "checked_at": round(self.checked_at, 3)}


class Readiness:
    def __init__(self, upstream: UpstreamSettings, lifecycle: Lifecycle) -> None:
        self._settings = upstream.health_check
        self._origin = upstream_origin(upstream)
        self._ssl: ssl.SSLContext | None = upstream_ssl_context(upstream)
        self._url = upstream.url.rstrip("/") + (self._settings.path or "")
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
        checks: dict[str, object] = {"upstream": self.upstream.as_json()}
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
        ok, detail = await self._probe()
        if ok != self.upstream.ok:
            log.info("upstream readiness changed", ready=ok, detail=detail)
        self.upstream = CheckResult(ok=ok, detail=detail, checked_at=time.time())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval)
            await self.check_once()

    async def _probe(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._settings.timeout):
                if self._client is not None:
                    response = await self._client.get(self._url)
                    if response.status_code >= 500:
                        return False, f"health path answered {response.status_code}"
                    return True, f"health path answered {response.status_code}"
                _, writer = await asyncio.open_connection(
                    self._origin.host,
                    self._origin.port,
                    ssl=self._ssl,
                    server_hostname=self._origin.host if self._ssl is not None else None,
                )
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
                return True, "connection accepted"
        except TimeoutError:
            return False, "timed out"
        except (OSError, ssl.SSLError, httpx.HTTPError) as exc:
            return False, f"unreachable ({exc.__class__.__name__})"
