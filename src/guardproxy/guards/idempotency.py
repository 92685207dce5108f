"""Idempotency-Key for unsafe requests (checklist item 39, draft-ietf-httpapi-idempotency-key-header).

On a route that opts in, a request carrying `Idempotency-Key` is answered at most once by the
upstream per (client, method, path, key): the first takes a lock and is forwarded; a repeat while
it runs gets 409, a repeat after it gets the stored response replayed (`Idempotent-Replayed:
true`) without reaching the upstream, a repeat with another method/target/body gets 422. The
state machine is guardproxy.idempotency.records; this module puts it on the wire.

Why the body is read before forwarding: a repeat can only be told from a new request by its
fingerprint, and the fingerprint covers the body, so the decision needs the whole body before
anything goes upstream. The body is hashed chunk by chunk as it arrives and held (bounded by the
route's body limit, which is what the upstream would have to accept anyway), then handed on
unchanged. Only requests that carry a key on an enabled route pay for it.

Why the response is stored before its last chunk goes out: a client that has the response and
sends its next retry at once must meet the replay, never a 409 from a store write still on its
way. A client that leaves mid-response does not lose the result either: the rest of the response
is still read and stored (up to max_response_bytes), so its retry gets the replay.

Where it sits: not in the guard hooks but around the forwarder (`wrap_app`), because a keyed
request needs one flow from body to lock to response to store-or-release, with a `finally` that
releases whatever ended it; because there it sees the upstream's own head before the chain's
response hooks add guardproxy's fields; and because routes without idempotency then pay one call
and one dict lookup, not five hooks and the chain's async path (callgrind: +14k instructions per
request as hooks, see the README). It still runs after every request hook (the rate limit), and
its answers still go through the chain's `send` (security headers, request ID, compression).

Only a complete, final answer of the upstream itself is stored (see records.disposition); else
the key is released so that a retry can succeed. The lock expires after lock_ttl whatever
happens to this worker. A store that fails is counted and logged, and fail_mode decides:
`pass` forwards without protection, `refuse` answers 503. Never a 500.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from guardproxy import problems
from guardproxy.answer import Answer
from guardproxy.asgi import ASGIApp, Receive, Scope, Send
from guardproxy.config import Settings
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.idempotency.exchange import KeyedExchange, audit
from guardproxy.idempotency.keys import key_fields
from guardproxy.idempotency.ledger import Ledger
from guardproxy.idempotency.records import (
    Disposition,
)
from guardproxy.idempotency.redis_store import RedisIdempotencyStore
from guardproxy.idempotency.store import IdempotencyStore, MemoryIdempotencyStore
from guardproxy.observability.metrics import MetricSources
from guardproxy.outcomes import Outcome

log = structlog.get_logger(component="guardproxy.idempotency")

# Decision labels for metrics: a small fixed set.
DECISIONS = ("executed", "replayed", "conflict", "mismatch", "missing_key", "malformed_key", "unprotected", "refused")
RESULTS = tuple(d.value for d in Disposition)


@dataclass(frozen=True, slots=True)
class IdempotencyPolicy:
    methods: frozenset[str]
    required: bool


class IdempotencyGuard(Guard):
    def __init__(
        self,
        *,
        policies: Mapping[str, IdempotencyPolicy],
        ledger: Ledger,
        key_prefix: str,
        key_parts: Sequence[str],
        ttl: float,
        lock_ttl: float,
        max_response_bytes: int,
        key_max_length: int,
        fail_mode: str,
        count_decision: Callable[[str, str], None] = lambda route, decision: None,
        count_result: Callable[[str, str], None] = lambda route, result: None,
    ) -> None:
        self.policies = dict(policies)
        self.ledger = ledger
        self.key_prefix = key_prefix
        self.key_parts: tuple[str | bytes, ...] = tuple(
            part.removeprefix("header:").lower().encode() if part.startswith("header:") else part for part in key_parts
        )
        self.ttl_ms = math.ceil(ttl * 1000)
        self.lock_ttl_ms = math.ceil(lock_ttl * 1000)
        self.max_response_bytes = max_response_bytes
        self.key_max_length = key_max_length
        self.refuse_on_failure = fail_mode == "refuse"
        self.count_decision = count_decision
        self.count_result = count_result
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.ledger.store.start()

    def report(self) -> dict[str, object]:
        """For /readyz, as an informational check: a failing store is news, and fail_mode
        decides what requests get meanwhile."""
        return self.ledger.report()

    def readiness_checks(self) -> Mapping[str, Callable[[], dict[str, object]]]:
        return {"idempotency_store": self.report}

    async def aclose(self) -> None:
        # Releases still on their way: they are quick, and a lock left behind expires anyway.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.ledger.timeout * 2)
        await self.ledger.store.aclose()

    # --- the request path ----------------------------------------------------------------------------

    def wrap_app(self, app: ASGIApp) -> ASGIApp:
        """The forwarder, with idempotency around it. This guard has no per-request hooks: the
        chain never calls it, and a request on a route without idempotency (or without a key
        where none is required) costs one call and a dict lookup in front of the forwarder."""
        return _IdempotentApp(self, app)

    # --- helpers -----------------------------------------------------------------------------------

    def refuse(
        self, scope: Scope, context: RequestContext, decision: str, problem: problems.ProblemType, detail: str | None
    ) -> Answer:
        context.outcome = Outcome("idempotency_" + decision)
        self.count_decision(context.route.name, decision)
        audit(scope, context, decision)
        return Answer.problem(
            scope, problem, detail or "This endpoint requires an Idempotency-Key header for this method."
        )

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _IdempotentApp:
    """Between the guard chain and the forwarder: it runs after every request hook (so a request
    the rate limit refused never takes a lock) and sends through the chain's `send` (so replays
    and refusals get the response hooks: security headers, request ID, compression)."""

    __slots__ = ("app", "guard")

    def __init__(self, guard: IdempotencyGuard, app: ASGIApp) -> None:
        self.guard = guard
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back what to await: no coroutine of its own per request.
        context: RequestContext = scope[CONTEXT_KEY]
        policy = self.guard.policies.get(context.route.name)
        if policy is None or scope["method"] not in policy.methods:
            return self.app(scope, receive, send)
        fields = key_fields(scope)
        if not fields and not policy.required:
            return self.app(scope, receive, send)
        return KeyedExchange(self.guard, scope, context, fields).run(self.app, receive, send)


def build_idempotency_guard(settings: Settings, metrics: MetricSources | None) -> IdempotencyGuard | None:
    """The Idempotency-Key guard, when some route opts in; None costs the other routes nothing."""
    policies = {
        route.name: IdempotencyPolicy(methods=frozenset(route.idempotency.methods), required=route.idempotency.required)
        for route in settings.routes
        if route.idempotency.enabled
    }
    if not policies:
        return None
    config = settings.idempotency
    url = config.redis_url or settings.rate_limit.redis_url
    store: IdempotencyStore = (
        RedisIdempotencyStore.from_url(url.get_secret_value())
        if url is not None
        else MemoryIdempotencyStore(max_keys=config.memory_max_keys, max_bytes=config.memory_max_bytes)
    )
    if metrics is not None:
        metrics.families.declare_idempotency_routes(policies, DECISIONS, RESULTS)
    return IdempotencyGuard(
        policies=policies,
        ledger=Ledger(
            store,
            timeout=config.timeout,
            on_error=metrics.counted(metrics.families.idempotency_store_errors).add if metrics is not None else _ignore,
        ),
        key_prefix=config.key_prefix,
        key_parts=config.key,
        ttl=config.ttl,
        lock_ttl=config.lock_ttl,
        max_response_bytes=config.max_response_bytes,
        key_max_length=config.key_max_length,
        fail_mode=config.fail_mode,
        count_decision=metrics.counted(metrics.families.idempotency_decisions).add if metrics is not None else _ignore,
        count_result=metrics.counted(metrics.families.idempotency_responses).add if metrics is not None else _ignore,
    )


def _ignore(*_: object) -> None:
    return None
