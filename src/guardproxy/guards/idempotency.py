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
from guardproxy.asgi import ASGIApp, Headers, Message, Receive, Scope, Send
from guardproxy.context import CONTEXT_KEY, RequestContext
from guardproxy.guards.chain import Guard
from guardproxy.idempotency.keys import MalformedKeyError, fingerprint_of, identity, key_fields, parse_key, store_key
from guardproxy.idempotency.ledger import Ledger, StoreUnavailableError
from guardproxy.idempotency.records import (
    CorruptEntryError,
    Disposition,
    StoredResponse,
    Verdict,
    decide,
    disposition,
    encode_done,
    new_lock,
    replay_headers,
)
from guardproxy.outcomes import Outcome

log = structlog.get_logger(component="guardproxy.idempotency")

_TOO_LARGE = "The request body is larger than this endpoint accepts."
# Decision labels for metrics: a small fixed set.
DECISIONS = ("executed", "replayed", "conflict", "mismatch", "missing_key", "malformed_key", "unprotected", "refused")
RESULTS = tuple(d.value for d in Disposition)


@dataclass(frozen=True, slots=True)
class IdempotencyPolicy:
    methods: frozenset[str]
    required: bool


class ClientGoneError(OSError):
    """The client left (or its body stalled) before its request body was complete."""


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
        return _Exchange(self.guard, scope, context, fields).run(self.app, receive, send)


def audit(scope: Scope, context: RequestContext, kind: str) -> None:
    """An audit line in the access log's security_event shape."""
    log.warning(
        "security_event",
        kind="idempotency_" + kind,
        request_id=context.request_id,
        client=context.client_host,
        method=scope["method"],
        route=context.route.name,
        path=scope["path"],
    )


class _Exchange:
    """One keyed request on its way: the body it held back, the lock it took, and the response it
    is capturing."""

    __slots__ = (
        "body",
        "body_size",
        "chunks",
        "client_gone",
        "complete",
        "context",
        "fields",
        "fingerprint",
        "from_upstream",
        "guard",
        "head",
        "lock",
        "raw_receive",
        "scope",
        "settled",
        "size",
        "status",
        "store_key",
        "too_large",
        "wire_send",
    )

    def __init__(self, guard: IdempotencyGuard, scope: Scope, context: RequestContext, fields: list[bytes]) -> None:
        self.guard = guard
        self.scope = scope
        self.context = context
        self.fields = fields
        self.raw_receive: Receive | None = None
        self.wire_send: Send | None = None
        self.body: bytes | None = None
        self.body_size = 0
        self.fingerprint = b""
        self.store_key = ""
        self.lock: bytes | None = None
        self.head: Headers = []
        self.status = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.complete = False
        self.from_upstream = False
        self.client_gone = False
        self.settled = False

    async def run(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        self.raw_receive, self.wire_send = receive, send
        answer = self._check_key()
        if answer is None:
            answer = await self._begin()
            if answer is not None:
                # Read here and never forwarded: the forwarder would have counted it for the logs.
                self.context.request_bytes += self.body_size
        if answer is not None:
            await answer.send(send)
            return
        if self.lock is None:  # the store failed and fail_mode is pass: forwarded unprotected
            await app(self.scope, self.receive, send)
            return
        try:
            await app(self.scope, self.receive, self.send)
        finally:
            # Whatever ended it (an upstream failure mid-body, the total timeout, a shutdown),
            # a lock not swapped for a response is released.
            if not self.settled:
                self.settle()

    # --- the request side ----------------------------------------------------------------------------

    def _check_key(self) -> Answer | None:
        guard, scope, context = self.guard, self.scope, self.context
        if not self.fields:
            return guard.refuse(scope, context, "missing_key", problems.IDEMPOTENCY_KEY_MISSING, None)
        try:
            key = parse_key(self.fields, guard.key_max_length)
        except MalformedKeyError as exc:
            return guard.refuse(scope, context, "malformed_key", problems.IDEMPOTENCY_KEY_MALFORMED, str(exc))
        self.store_key = store_key(
            guard.key_prefix, identity(guard.key_parts, scope, context), scope["method"], scope["path"], key
        )
        return None

    async def receive(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        assert self.raw_receive is not None
        return await self.raw_receive()

    async def _read_body(self) -> Answer | None:
        """The whole body, hashed as it arrives and kept to hand on: an Answer if it is too large.
        The body limit guard's wrapper already sits in `receive` and refuses first; this check
        keeps the promise whatever the chain holds."""
        assert self.raw_receive is not None
        digest = fingerprint_of(self.scope)
        limit = self.context.route.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.raw_receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError("client left before its request body was complete")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self.context.outcome = Outcome.TOO_LARGE
                return Answer.problem(self.scope, problems.CONTENT_TOO_LARGE, _TOO_LARGE)
            if chunk:
                digest.update(chunk)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.body_size = size
        self.fingerprint = digest.digest()
        return None

    async def _begin(self) -> Answer | None:
        too_large = await self._read_body()
        if too_large is not None:
            return too_large
        guard, scope, context = self.guard, self.scope, self.context
        lock = new_lock(self.fingerprint)
        try:
            found = await guard.ledger.acquire(self.store_key, lock, guard.lock_ttl_ms)
            verdict, stored = decide(found[0] if found is not None else None, self.fingerprint)
        except (StoreUnavailableError, CorruptEntryError) as exc:
            return self._store_failed(exc)
        route = context.route.name
        if verdict is Verdict.PROCEED:
            self.lock = lock
            guard.count_decision(route, "executed")
            return None
        if verdict is Verdict.REPLAY:
            assert stored is not None
            context.outcome = Outcome.IDEMPOTENT_REPLAY
            guard.count_decision(route, "replayed")
            return Answer(stored.status, replay_headers(stored), stored.body)
        if verdict is Verdict.CONFLICT:
            context.outcome = Outcome.IDEMPOTENCY_CONFLICT
            guard.count_decision(route, "conflict")
            audit(scope, context, "conflict")
            # The first request usually finishes within a second; its lock is only the worst
            # case, after a crash.
            return Answer.problem(
                scope,
                problems.IDEMPOTENCY_CONFLICT,
                "A request with this Idempotency-Key is still being processed; retry later.",
                [(b"retry-after", b"1")],
            )
        context.outcome = Outcome.IDEMPOTENCY_MISMATCH
        guard.count_decision(route, "mismatch")
        audit(scope, context, "mismatch")
        return Answer.problem(
            scope,
            problems.IDEMPOTENCY_MISMATCH,
            "This Idempotency-Key was already used for a different request.",
        )

    def _store_failed(self, exc: Exception) -> Answer | None:
        guard, context = self.guard, self.context
        route = context.route.name
        if isinstance(exc, CorruptEntryError):
            guard.ledger.count_error("corrupt")
        if guard.refuse_on_failure:
            context.outcome = Outcome.IDEMPOTENCY_UNAVAILABLE
            guard.count_decision(route, "refused")
            log.warning("idempotency store unavailable: request refused", request_id=context.request_id, route=route)
            return Answer.problem(
                self.scope,
                problems.IDEMPOTENCY_UNAVAILABLE,
                "Duplicate protection is unavailable right now; retry shortly.",
                [(b"retry-after", b"1")],
            )
        guard.count_decision(route, "unprotected")
        log.warning(
            "idempotency store unavailable: forwarded without duplicate protection",
            request_id=context.request_id,
            route=route,
        )
        return None

    # --- the response side ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.settled:
            await self._relay(message)
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            # The upstream's own head, before the chain's response hooks add guardproxy's
            # per-response fields (they mutate this list once it is sent on): a replay gets
            # those afresh, as every Answer does.
            self.head = list(message["headers"])
            # The forwarder notes the upstream's time to answer just before relaying its head;
            # guardproxy's own answers (502/503/504) leave it at zero.
            self.from_upstream = self.context.upstream_seconds > 0
            await self._relay(message)
            return
        body: bytes = message.get("body", b"")
        if not self.too_large:
            self.size += len(body)
            if self.size > self.guard.max_response_bytes:
                self.too_large = True
                self.chunks = []
            elif body:
                self.chunks.append(body)
        if not message.get("more_body", False):
            self.complete = True
            await self._store()
        elif self.client_gone and self.too_large:
            raise ClientGoneError("client left and the response is too large to keep")
        await self._relay(message)

    async def _relay(self, message: Message) -> None:
        if self.client_gone:
            return
        assert self.wire_send is not None
        try:
            await self.wire_send(message)
        except OSError:
            if self.settled or not self._storable_so_far():
                raise
            # Keep reading the upstream's answer for the retry that will come.
            self.client_gone = True
            self.context.outcome = Outcome.CLIENT_CLOSED

    def _storable_so_far(self) -> bool:
        return (
            disposition(self.status, from_upstream=self.from_upstream, complete=True, too_large=self.too_large)
            is Disposition.STORED
        )

    def _disposition(self) -> Disposition:
        return disposition(
            self.status, from_upstream=self.from_upstream, complete=self.complete, too_large=self.too_large
        )

    async def _store(self) -> None:
        """The response is complete: store it (or release the key) before its last chunk goes out."""
        verdict = self._disposition()
        if verdict is not Disposition.STORED:
            self.settle(verdict)
            return
        self.settled = True
        guard, lock, context = self.guard, self.lock, self.context
        assert lock is not None
        record = encode_done(self.fingerprint, StoredResponse(self.status, self.head, b"".join(self.chunks)))
        self.chunks = []
        stored = await guard.ledger.complete(self.store_key, lock, record, guard.ttl_ms)
        if stored is None:
            result = Disposition.STORE_FAILED
            log.warning(
                "idempotency store failed to keep a response: its lock expires by itself",
                request_id=context.request_id,
                route=context.route.name,
            )
        elif not stored:
            result = Disposition.LOCK_LOST
            log.warning(
                "idempotency lock expired before the response was complete: not stored",
                request_id=context.request_id,
                route=context.route.name,
            )
        else:
            result = Disposition.STORED
        guard.count_result(context.route.name, result.value)

    def settle(self, verdict: Disposition | None = None) -> None:
        """Not stored: release the key (in the background) so that a retry can succeed."""
        self.settled = True
        verdict = verdict or self._disposition()
        guard, context = self.guard, self.context
        guard.count_result(context.route.name, verdict.value)
        if verdict is Disposition.TOO_LARGE:
            log.warning(
                "response too large to store for replay: forwarded, key released",
                request_id=context.request_id,
                route=context.route.name,
                max_response_bytes=guard.max_response_bytes,
            )
        self.chunks = []
        assert self.lock is not None
        guard.spawn(guard.ledger.release(self.store_key, self.lock))
