"""Deprecated and retiring routes (checklist item 40): the fields that tell clients, a count of
who still calls, and, when the operator asks for it, 410 Gone once the sunset has passed.

- `Deprecation: @<epoch seconds>` (RFC 9745 §2: a structured-field Date, RFC 9651 §3.3.7), a
  moment in the past (deprecated) or the future (will be);
- `Sunset: <HTTP-date>` (RFC 8594 §3): when the route is expected to stop answering;
- `Link: <...>; rel="deprecation"` (RFC 9745 §3) and `rel="sunset"` (RFC 8594 §6) to the
  documentation, as field lines of their own so they combine with the upstream's links.

guardproxy's configuration is the edge's word on a route's life: the upstream's own
Deprecation and Sunset fields are replaced, never doubled into two conflicting values. The
fields go on every response of the route, guardproxy's own answers included (a 429 for a
deprecated route is still a response from a deprecated route). Settings are per route, in a
table by route name built once at start; a route without any costs one dictionary lookup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import Headers, Scope
from guardproxy.config import RouteSettings, Settings
from guardproxy.context import RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.observability.metrics import MetricSources
from guardproxy.outcomes import Outcome

_REPLACED = frozenset({b"deprecation", b"sunset"})


@dataclass(frozen=True, slots=True)
class RouteLifecycle:
    """One route's fields, rendered once, and the moment after which it answers 410 (if ever)."""

    headers: tuple[tuple[bytes, bytes], ...]
    gone_at: float | None = None
    gone_detail: str = ""


def deprecation_value(moment: datetime) -> bytes:
    """RFC 9745 §2.1: `@` and the seconds since the epoch (an sf-date)."""
    return b"@%d" % int(moment.timestamp())


def sunset_value(moment: datetime) -> bytes:
    """RFC 8594 §3: an HTTP-date (IMF-fixdate, RFC 9110 §5.6.7)."""
    return format_datetime(moment, usegmt=True).encode("ascii")


def route_lifecycle(route: RouteSettings) -> RouteLifecycle | None:
    """What a route's settings say, or None when it is neither deprecated nor retiring."""
    if route.deprecation is None and route.sunset is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    if route.deprecation is not None:
        headers.append((b"deprecation", deprecation_value(route.deprecation)))
    if route.sunset is not None:
        headers.append((b"sunset", sunset_value(route.sunset)))
    if route.link is not None and route.deprecation is not None:
        headers.append((b"link", b'<%s>; rel="deprecation"' % route.link.encode("ascii")))
    sunset_link = route.sunset_link or route.link
    if sunset_link is not None and route.sunset is not None:
        headers.append((b"link", b'<%s>; rel="sunset"' % sunset_link.encode("ascii")))
    if route.gone_after_sunset and route.sunset is not None:
        return RouteLifecycle(
            tuple(headers),
            gone_at=route.sunset.timestamp(),
            gone_detail=f"This endpoint was retired on {route.sunset.date().isoformat()}.",
        )
    return RouteLifecycle(tuple(headers))


def route_lifecycles(routes: Iterable[RouteSettings]) -> dict[str, RouteLifecycle]:
    """The table the guard works from: the deprecated or retiring routes, by name."""
    return {route.name: lifecycle for route in routes if (lifecycle := route_lifecycle(route)) is not None}


class DeprecationGuard(Guard):
    def __init__(
        self,
        *,
        routes: Mapping[str, RouteLifecycle],
        count: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # By route name; only routes that are deprecated or retiring are in it.
        self._routes = dict(routes)
        self._count = count
        self._clock = clock

    def on_request(self, scope: Scope, context: RequestContext) -> Answer | None:
        lifecycle = self._routes.get(context.route.name)
        if lifecycle is None or lifecycle.gone_at is None or self._clock() < lifecycle.gone_at:
            return None
        context.outcome = Outcome.GONE
        return Answer.problem(scope, problems.GONE, lifecycle.gone_detail)

    def on_response_start(self, context: RequestContext, headers: Headers) -> None:
        lifecycle = self._routes.get(context.route.name)
        if lifecycle is None:
            return
        headers[:] = [field for field in headers if field[0] not in _REPLACED]
        headers.extend(lifecycle.headers)

    def on_complete(self, scope: Scope, context: RequestContext) -> None:
        # Every request to the route, whoever answered it: who still calls is what matters.
        name = context.route.name
        if name in self._routes:
            self._count(name)


def build_deprecation_guard(settings: Settings, metrics: MetricSources | None) -> DeprecationGuard | None:
    lifecycles = route_lifecycles(settings.routes)
    if not lifecycles:
        return None
    if metrics is not None:
        metrics.families.declare_deprecated_routes(lifecycles)
    return DeprecationGuard(
        routes=lifecycles,
        count=metrics.counted(metrics.families.deprecated_requests).add if metrics is not None else _ignore,
    )


def _ignore(*_: object) -> None:
    return None
