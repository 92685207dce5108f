"""Settings of named routes and what each may override."""

from __future__ import annotations

from guardproxy.config.base import MethodList, Name, PathPattern, Section
from guardproxy.config.guards import BodyLimitOverride, CorsOverride
from guardproxy.config.idempotency import IdempotencyRoute
from guardproxy.config.server import TimeoutOverrides


class RouteSettings(Section):
    name: Name
    path: PathPattern
    methods: MethodList | None = None
    upstream: TimeoutOverrides = TimeoutOverrides()
    body_limit: BodyLimitOverride = BodyLimitOverride()
    cors: CorsOverride = CorsOverride()
    idempotency: IdempotencyRoute = IdempotencyRoute()
