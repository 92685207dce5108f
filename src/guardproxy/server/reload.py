"""Reload without restart (SIGHUP): re-read the configuration, build a second runtime beside the
serving one, start it and swap it in; the old runtime finishes the requests it has in flight
and is then closed.

A configuration that does not validate changes nothing: every problem is logged by its
setting's dotted name, and the old runtime keeps serving. Settings the process fixed at start
(`config/source.py` `RESTART_ONLY`) keep their running values, each named in a warning, while
the rest applies. The TLS listener's certificate and key reload in place. Budgets of rate-limit
rules that did not change carry over: the in-process store is handed to the new runtime, minus
the keys of the rules that changed (Redis-held budgets survive by themselves).

Nothing here runs per request: a reload costs the request path nothing.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable

import structlog

from guardproxy.config import ConfigError, Settings
from guardproxy.config.source import ConfigSource, kept_values, restart_only_changes
from guardproxy.guards.concurrency import ConcurrencyGuard
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.ratelimit.memory import MemoryStore
from guardproxy.ratelimit.rules import compile_rules
from guardproxy.runtime import CurrentRuntime, Runtime
from guardproxy.server.limits import Lifecycle

log = structlog.get_logger(component="guardproxy.reload")

# How often a retiring runtime is asked whether its last request has finished.
_DRAIN_POLL_SECONDS = 0.05


class Reloader:
    """One worker's reloads: `request()` is the SIGHUP handler; reloads never overlap, and
    signals that arrive during one are folded into one more reload after it."""

    def __init__(
        self,
        source: ConfigSource,
        current: CurrentRuntime,
        *,
        lifecycle: Lifecycle,
        metrics: ProxyMetrics | None,
        tls_context: Callable[[], ssl.SSLContext | None] = lambda: None,
    ) -> None:
        self._tls_context = tls_context
        self._source = source
        self._current = current
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._retiring: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        if self._lifecycle.draining:
            # Stopping: a new runtime would serve nobody and only delay the exit.
            log.warning("reload ignored: the worker is draining")
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._reload_until_current())

    async def _reload_until_current(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            await self.reload()

    async def reload(self) -> str:
        """Read the configuration again and apply it; returns the result counted in
        guardproxy_config_reloads_total: applied, partial or failed."""
        running = self._current.runtime.settings
        try:
            wanted = self._source.load()
            changes = restart_only_changes(running, wanted)
            if changes:
                wanted = self._source.load(keep=kept_values(running, changes))
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: configuration error; the running configuration stays", problem=problem)
            return self._count("failed")
        for change in changes:
            log.warning("reload: setting not applied", setting=change.setting, detail=change.describe())
        fresh = await self._started(wanted)
        if fresh is None:
            return self._count("failed")
        if not self._load_certificate(wanted):
            await fresh.aclose()
            return self._count("failed")
        previous = self._current.swap(fresh)
        _hand_over_budgets(previous, fresh)
        task = asyncio.get_running_loop().create_task(self._retire(previous))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        result = "partial" if changes else "applied"
        log.info(
            "configuration reloaded",
            pid=os.getpid(),
            result=result,
            config_hash=fresh.readiness.config["hash"] if fresh.readiness.config else None,
            not_applied=[change.setting for change in changes] or None,
        )
        return self._count(result)

    def _load_certificate(self, settings: Settings) -> bool:
        """Give the TLS listener the configured certificate and key (rotated files, or others):
        new handshakes use them, established connections keep theirs. Checked on a context of its
        own first, so a pair that does not load never half-replaces the live one."""
        live = self._tls_context()
        cert, key = settings.server.tls_cert, settings.server.tls_key
        if live is None or cert is None or key is None:
            return True
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            live.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a certificate and key"
            log.error("reload failed: server.tls_cert/server.tls_key cannot be loaded", error=reason)
            return False
        return True

    async def _started(self, settings: Settings) -> Runtime | None:
        memory = _carried_memory(self._current.runtime, settings)
        try:
            fresh = Runtime(settings, lifecycle=self._lifecycle, metrics=self._metrics, rate_limit_memory=memory)
        except Exception as exc:  # any failure to build keeps the running runtime
            log.error("reload failed: the new configuration could not be built", error=repr(exc))
            return None
        try:
            await fresh.start()
        except Exception as exc:  # as above: the old runtime keeps serving
            log.error("reload failed: the new configuration could not start", error=repr(exc))
            await fresh.aclose()
            return None
        return fresh

    async def _retire(self, previous: Runtime) -> None:
        """Close `previous` once its requests in flight are done, or after shutdown_timeout
        (what a stop would give them); at shutdown, at once."""
        polls = int(previous.settings.server.shutdown_timeout / _DRAIN_POLL_SECONDS) + 1
        try:
            for _ in range(polls):
                if not in_flight(previous):
                    break
                await asyncio.sleep(_DRAIN_POLL_SECONDS)
            if in_flight(previous):
                log.warning("previous configuration closed with requests in flight", in_flight=in_flight(previous))
        finally:
            await previous.aclose()

    async def aclose(self) -> None:
        """At shutdown: finish a reload in progress, close every retiring runtime now."""
        if self._task is not None:
            self._again = False
            await self._task
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)

    def _count(self, result: str) -> str:
        if self._metrics is not None:
            self._metrics.config.reloads.labels(result).inc()
            self._metrics.config.last_reload_successful.set(0 if result == "failed" else 1)
        return result


def reloaded_settings(running: Settings, source: ConfigSource) -> Settings:
    """The settings a reload would apply, or `running` if the configuration does not validate
    (the supervisor's view: its workers log the problems)."""
    try:
        wanted = source.load()
        changes = restart_only_changes(running, wanted)
        return source.load(keep=kept_values(running, changes)) if changes else wanted
    except ConfigError:
        return running


def in_flight(runtime: Runtime) -> int:
    """Requests the runtime admitted and has not finished (its concurrency guard counts them)."""
    return sum(
        guard.in_flight for chain in runtime.chains for guard in chain.guards if isinstance(guard, ConcurrencyGuard)
    )


def _carried_memory(previous: Runtime, settings: Settings) -> MemoryStore | None:
    """The previous runtime's in-process budgets, unless the key prefix changed (no key would match)."""
    if previous.settings.rate_limit.key_prefix != settings.rate_limit.key_prefix:
        return None
    return previous.rate_limit_memory


def _hand_over_budgets(previous: Runtime, fresh: Runtime) -> None:
    """Forget the budgets of rules that changed or went away; keep the others."""
    memory = fresh.rate_limit_memory
    if memory is not previous.rate_limit_memory:
        return
    memory.max_keys = fresh.settings.rate_limit.local_max_keys
    before = {rule.name: rule for rule in compile_rules(previous.settings.rate_limit)}
    after = {rule.name: rule for rule in compile_rules(fresh.settings.rate_limit)}
    changed = {name for name, rule in before.items() if after.get(name) != rule}
    if changed:
        memory.retain(_keys_outside(changed, fresh.settings.rate_limit.key_prefix))


def _keys_outside(rules: set[str], prefix: str) -> Callable[[str], bool]:
    """Store keys read `<prefix>{<rule>:<digest>}` (ratelimit/rules.py `Rule.key`)."""

    def keep(key: str) -> bool:
        return key[len(prefix) + 1 : key.rfind(":")] not in rules

    return keep
