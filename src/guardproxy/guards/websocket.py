"""Upgrade handshakes (WebSocket, RFC 6455 §4): checked, origin-guarded and counted before any
goes upstream.

This guard runs only in the chain for upgrade requests (runtime.build_upgrade_app), which
the server picks when llhttp reports an upgrade, so plain requests never meet it. By then
every earlier guard has judged the handshake like any request (client address, request ID,
hosts, CORS, methods, HTTPS redirect, shedding, paths); authentication and rate limits come
after it. It decides one of:
- a protocol the route does not tunnel (or none): nothing; the request goes on as a plain one
  and Upgrade is removed like any hop-by-hop field (RFC 9110 §7.8 lets a server ignore it);
- a malformed WebSocket handshake: 400, with `Sec-WebSocket-Version: 13` (§4.4);
- an `Origin` the route does not allow (or none, unless allowed): 403. Browsers let any page
  open a WebSocket to any host and send its cookies along, and the handshake is not subject to
  CORS: checking Origin is what stops cross-site WebSocket hijacking (§10.2);
- draining, or the route's tunnels at `max_tunnels`: 503 with Retry-After;
- otherwise a `TunnelTicket` in the scope: a reserved slot that the upgrade forwarder turns
  into a tunnel, or that `on_complete` gives back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Scope
from guardproxy.config import Settings
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.http1.upgrade import WEBSOCKET, HandshakeError, requested_protocols, vet_websocket_request
from guardproxy.observability.logging import log_sink
from guardproxy.observability.metrics import MetricSources
from guardproxy.origins import SERIALIZED_ORIGIN, compile_origin_pattern
from guardproxy.outcomes import Outcome
from guardproxy.proxy.tunnel import TunnelLimits
from guardproxy.proxy.tunnels import TICKET_KEY, Tunnels, TunnelTicket
from guardproxy.routes import DEFAULT_ROUTE_NAME
from guardproxy.server.limits import Lifecycle

_RETRY_AFTER = (b"retry-after", b"1")
_VERSION = (b"sec-websocket-version", b"13")


class OriginList:
    """Origins allowed to open a tunnel, matched as CORS origins are (guards/cors.py)."""

    def __init__(self, origins: Iterable[str]) -> None:
        compiled = [compile_origin_pattern(origin) for origin in origins]
        self._exact = frozenset(origin for origin in compiled if isinstance(origin, bytes))
        self._patterns = tuple(origin for origin in compiled if not isinstance(origin, bytes))

    def allows(self, origin: bytes) -> bool:
        origin = origin.lower()
        if origin in self._exact:
            return True
        if origin == b"null" or not SERIALIZED_ORIGIN.fullmatch(origin):
            return False
        return any(pattern.fullmatch(origin) for pattern in self._patterns)


@dataclass(frozen=True, slots=True)
class UpgradePolicy:
    """One route's tunnel rules, compiled once."""

    protocols: frozenset[bytes]
    # None: any origin (no CORS origins and none configured, or "*").
    origins: OriginList | None
    allow_missing_origin: bool
    max_tunnels: int
    limits: TunnelLimits
    going_away: bool = False


class WebSocketGuard(Guard):
    def __init__(self, *, policies: Mapping[str, UpgradePolicy], tunnels: Tunnels, lifecycle: Lifecycle) -> None:
        self.policies = dict(policies)
        self.tunnels = tunnels
        self._lifecycle = lifecycle

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        policy = self.policies.get(context.route.name)
        protocols = policy.protocols if policy is not None else ()
        protocol = next((token for token in requested_protocols(scope["headers"]) if token in protocols), None)
        if policy is None or protocol is None:
            return None  # not tunnelled here: a plain request
        handshake = None
        if protocol == WEBSOCKET:
            try:
                handshake = vet_websocket_request(scope["method"], scope["http_version"], scope["headers"])
            except HandshakeError as exc:
                return self._refuse(scope, context, "malformed", Outcome.BAD_HANDSHAKE, str(exc))
            refused_origin = _origin_refusal(policy, handshake.origin)
            if refused_origin:
                return self._refuse(scope, context, "origin", Outcome.ORIGIN_REFUSED, refused_origin)
        if self._lifecycle.draining:
            return self._refuse(scope, context, "draining", Outcome.DRAINING, "This instance is shutting down.")
        route = context.route.name
        if not self.tunnels.reserve(route, policy.max_tunnels):
            return self._refuse(scope, context, "limit", Outcome.TUNNEL_LIMIT, "Too many connections are open.")
        scope[TICKET_KEY] = TunnelTicket(
            route=route, protocol=protocol, handshake=handshake, limits=policy.limits, going_away=policy.going_away
        )
        return None

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        ticket: TunnelTicket | None = scope.get(TICKET_KEY)
        if ticket is not None and not ticket.opened:
            self.tunnels.release(ticket.route)

    def _refuse(self, scope: Scope, context: RequestContext, reason: str, outcome: Outcome, detail: str) -> Answer:
        self.tunnels.refused(reason)
        context.outcome = outcome
        if outcome is Outcome.BAD_HANDSHAKE:
            return Answer.problem(scope, problems.BAD_HANDSHAKE, detail, [_VERSION])
        if outcome is Outcome.ORIGIN_REFUSED:
            return Answer.problem(scope, problems.ORIGIN_REFUSED, detail)
        return Answer.problem(scope, problems.OVERLOADED, detail, [_RETRY_AFTER])


def _origin_refusal(policy: UpgradePolicy, origin: bytes | None) -> str | None:
    """Why the handshake's Origin is refused on the route, or None."""
    if policy.origins is None:
        return None
    if origin is None:
        return None if policy.allow_missing_origin else "An Origin is required."
    return None if policy.origins.allows(origin) else "This origin is not allowed."


def build_websocket_guard(
    settings: Settings, metrics: MetricSources | None, lifecycle: Lifecycle
) -> WebSocketGuard | None:
    """The guard with each route's policy, or None when no route tunnels upgrades."""
    policies: dict[str, UpgradePolicy] = {}
    for route in [*settings.routes, None]:
        websocket = settings.effective_websocket(route)
        if not websocket.enabled or not websocket.protocols:
            continue
        origins = websocket.allowed_origins
        if origins is None:
            origins = settings.effective_cors(route).origins
        name = route.name if route is not None else DEFAULT_ROUTE_NAME
        policies[name] = UpgradePolicy(
            protocols=frozenset(protocol.encode("ascii") for protocol in websocket.protocols),
            origins=OriginList(origins) if origins and "*" not in origins else None,
            allow_missing_origin=websocket.allow_missing_origin,
            max_tunnels=websocket.max_tunnels,
            limits=TunnelLimits(
                idle_timeout=websocket.idle_timeout,
                max_lifetime=websocket.max_lifetime,
                shutdown_timeout=settings.server.shutdown_timeout,
            ),
            going_away=websocket.going_away_at_shutdown,
        )
    if not policies:
        return None
    families = metrics.families.websocket if metrics is not None else None
    if families is not None:
        families.declare_routes(policies)
    tunnels = Tunnels(metrics=families, write_log=log_sink().write if settings.logging.access_log else None)
    if metrics is not None:
        metrics.flush_hooks.append(tunnels.count_bytes)
    return WebSocketGuard(policies=policies, tunnels=tunnels, lifecycle=lifecycle)
