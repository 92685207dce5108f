"""Settings of named routes and what each may override."""

from __future__ import annotations

from pydantic import model_validator

from guardproxy.config.auth import CidrList, RouteAuth
from guardproxy.config.base import MethodList, Name, PathPattern, Section
from guardproxy.config.guards import (
    BodyLimitOverride,
    CorsOverride,
    LinkTarget,
    Moment,
    RouteCacheControl,
    check_lifecycle,
)
from guardproxy.config.idempotency import IdempotencyRoute
from guardproxy.config.server import TimeoutOverrides
from guardproxy.config.websocket import WebSocketOverride


class RouteSettings(Section):
    name: Name
    path: PathPattern
    methods: MethodList | None = None
    # Methods this route serves; any other gets 405 with Allow. `methods` selects a route,
    # this refuses on it. GET allows HEAD too.
    allowed_methods: MethodList | None = None
    upstream: TimeoutOverrides = TimeoutOverrides()
    body_limit: BodyLimitOverride = BodyLimitOverride()
    cors: CorsOverride = CorsOverride()
    idempotency: IdempotencyRoute = IdempotencyRoute()
    # Authentication on this route; null: auth.default's.
    auth: RouteAuth | None = None
    # Client addresses (CIDRs) refused (ip_deny wins) or, when ip_allow is set, the only ones let in.
    ip_allow: CidrList = []
    ip_deny: CidrList = []
    # Cache-Control for this route's responses that carry none: null inherits
    # security_headers.cache_control, "" adds none.
    cache_control: RouteCacheControl = None
    # Deprecation (RFC 9745) and sunset (RFC 8594) of this route; see guards/deprecation.py.
    deprecation: Moment | None = None
    sunset: Moment | None = None
    link: LinkTarget | None = None
    sunset_link: LinkTarget | None = None
    gone_after_sunset: bool = False
    # WebSocket tunnels on this route; unset fields inherit the `websocket` section.
    websocket: WebSocketOverride = WebSocketOverride()

    @model_validator(mode="after")
    def _lifecycle(self) -> RouteSettings:
        check_lifecycle(self.deprecation, self.sunset, self.link, self.sunset_link, self.gone_after_sunset)
        return self

    @model_validator(mode="after")
    def _allowed_within_selected(self) -> RouteSettings:
        if self.allowed_methods is not None:
            if "CONNECT" in self.allowed_methods:
                raise ValueError("allowed_methods: CONNECT is never forwarded")
            if self.methods is not None:
                unreachable = sorted(set(self.allowed_methods) - set(self.methods))
                if unreachable:
                    raise ValueError(
                        f"allowed_methods: {', '.join(unreachable)} never reaches this route (not in methods)"
                    )
        return self
