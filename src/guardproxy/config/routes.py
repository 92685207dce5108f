"""Settings of named routes and what each may override."""

from __future__ import annotations

from guardproxy.config.auth import CidrList, RouteAuth
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
    # Authentication on this route; null: auth.default's.
    auth: RouteAuth | None = None
    # Client addresses (CIDRs) refused (ip_deny wins) or, when ip_allow is set, the only ones let in.
    ip_allow: CidrList = []
    ip_deny: CidrList = []
