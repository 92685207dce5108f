"""Per-request state that guards share, carried in the ASGI scope.

One small object per request instead of loose scope keys: every guard reads and writes named,
typed fields, and the forwarder turns them into the upstream request in a single pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guardproxy.asgi import Scope
    from guardproxy.routes import RoutePolicy

CONTEXT_KEY = "guardproxy.context"


@dataclass(slots=True)
class RequestContext:
    route: RoutePolicy
    client_host: str
    started_at: float = field(default_factory=time.perf_counter)
    request_id: str = ""
    # W3C trace context to send upstream; empty when the request carries none we can continue.
    traceparent: bytes = b""
    tracestate: bytes = b""
    # Set by the forwarder for the access log and metrics: how the exchange ended.
    outcome: str = "ok"
    status: int = 0


def context_of(scope: Scope) -> RequestContext | None:
    return scope.get(CONTEXT_KEY)
