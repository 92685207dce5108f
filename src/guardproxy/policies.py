"""Settings turned into the plain policy objects other layers read: the route table (each
route's settings merged with the global ones once), each route's CORS policy, and the server's
connection limits. `runtime.py` builds everything else."""

from __future__ import annotations

from guardproxy.config import CorsSettings, RouteSettings, ServerSettings, Settings, TimeoutOverrides
from guardproxy.guards.cors import CorsPolicy
from guardproxy.routes import DEFAULT_ROUTE_NAME, Route, RoutePolicy, RouteTable, compile_path_pattern
from guardproxy.server.limits import ConnectionLimits


def connection_limits(settings: ServerSettings) -> ConnectionLimits:
    return ConnectionLimits(
        head_timeout=settings.request_head_timeout,
        keep_alive_timeout=settings.keep_alive_timeout,
        body_timeout=settings.request_body_timeout,
        max_head_bytes=settings.max_request_head_bytes,
        max_header_fields=settings.max_header_fields,
        max_uri_bytes=settings.max_uri_bytes,
    )


def build_route_table(settings: Settings) -> RouteTable:
    upstream = settings.upstream

    def policy(route: RouteSettings | None) -> RoutePolicy:
        """A route's settings merged with the global ones once, here; None is the default route."""
        timeouts = route.upstream if route is not None else TimeoutOverrides()
        body_limit = route.body_limit.max_bytes if route is not None else None
        return RoutePolicy(
            name=route.name if route is not None else DEFAULT_ROUTE_NAME,
            connect_timeout=timeouts.connect_timeout or upstream.connect_timeout,
            read_timeout=timeouts.read_timeout or upstream.read_timeout,
            total_timeout=timeouts.total_timeout or upstream.total_timeout,
            max_body_bytes=body_limit if body_limit is not None else settings.body_limit.max_bytes,
        )

    routes = [
        Route(
            pattern=compile_path_pattern(route.path),
            methods=frozenset(route.methods) if route.methods else None,
            policy=policy(route),
        )
        for route in settings.routes
    ]
    return RouteTable(routes, default=policy(None))


def cors_policies(settings: Settings) -> dict[str, CorsPolicy]:
    """Each route's CORS policy, by route name; a route without one leaves CORS to the upstream."""
    routes: list[RouteSettings | None] = [*settings.routes, None]
    policies = {
        route.name if route is not None else DEFAULT_ROUTE_NAME: cors_policy(settings.effective_cors(route))
        for route in routes
    }
    return {name: policy for name, policy in policies.items() if policy is not None}


def cors_policy(settings: CorsSettings) -> CorsPolicy | None:
    if not settings.origins:
        return None
    return CorsPolicy(
        origins=settings.origins,
        methods=settings.methods,
        allow_headers=settings.allow_headers,
        expose_headers=settings.expose_headers,
        allow_credentials=settings.allow_credentials,
        max_age=settings.max_age,
    )
