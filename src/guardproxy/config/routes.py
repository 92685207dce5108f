"""Settings of named routes and what each may override."""

from __future__ import annotations

from pydantic import model_validator

from guardproxy.config.base import MethodList, Name, PathPattern, Section
from guardproxy.config.guards import BodyLimitOverride, CorsOverride
from guardproxy.config.server import TimeoutOverrides


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
