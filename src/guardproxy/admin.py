"""The admin listener's application: liveness, readiness and metrics, on a port of its own so that
none of them can be reached (or spoofed) through the proxy listener."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guardproxy.health import Readiness
from guardproxy.observability.metrics import ProxyMetrics

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_admin_app(readiness_of: Callable[[], Readiness], metrics: ProxyMetrics | None) -> Starlette:
    """`readiness_of` gives the current runtime's readiness: a reload replaces it."""

    async def healthz(_: Request) -> Response:
        # Liveness: the event loop answers. Upstream trouble is readiness' business; restarting
        # the proxy would not fix the upstream.
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        readiness = readiness_of()
        return JSONResponse(readiness.report(), status_code=200 if readiness.ready else 503)

    async def metrics_endpoint(_: Request) -> Response:
        if metrics is None:
            return Response(status_code=404)
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ]
    )
