"""server/reload.py in one event loop, against a real upstream on a loopback port: what a reload
applies, what it refuses, what it carries over and what it closes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from guardproxy.config.source import ConfigSource
from guardproxy.guards.concurrency import ConcurrencyGuard
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.runtime import CurrentRuntime, Runtime
from guardproxy.server.limits import Lifecycle
from guardproxy.server.reload import Reloader, in_flight, reloaded_settings
from tests.support.factories import call, make_scope


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s, in loop turns) until `condition` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


def live_timers() -> int:
    scheduled: list[asyncio.TimerHandle] = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return sum(1 for handle in scheduled if not handle.cancelled())


def live_tasks() -> Counter[str]:
    tasks = [task for task in asyncio.all_tasks() if not task.done() and task is not asyncio.current_task()]
    return Counter(task.get_coro().__qualname__ for task in tasks)  # type: ignore[union-attr]


class Proxy:
    """A runtime serving from a config file, with its reloader and metrics."""

    def __init__(self, path: Path, upstream_url: str) -> None:
        self.path, self.upstream_url = path, upstream_url
        self.metrics = ProxyMetrics(CollectorRegistry())
        self.lifecycle = Lifecycle()
        self.source = ConfigSource({}, path)

    def write(self, **sections: object) -> None:
        self.path.write_text(yaml.safe_dump({"upstream": {"url": self.upstream_url}, **sections}))

    async def __aenter__(self) -> Proxy:
        self.current = CurrentRuntime(Runtime(self.source.load(), lifecycle=self.lifecycle, metrics=self.metrics))
        await self.current.runtime.start()
        self.reloader = Reloader(self.source, self.current, lifecycle=self.lifecycle, metrics=self.metrics)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.reloader.aclose()
        await self.current.runtime.aclose()

    async def status(self, **scope: object) -> int:
        return (await call(self.current.proxy_site().app, make_scope(**scope))).status  # type: ignore[arg-type]

    def reloads(self, result: str) -> float:
        return self.metrics.config.reloads.labels(result)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
def proxy(tmp_path: Path, upstream_url: str) -> Proxy:
    proxy = Proxy(tmp_path / "gp.yaml", upstream_url)
    proxy.write()
    return proxy


async def test_an_invalid_file_keeps_the_running_runtime_and_counts_a_failure(proxy: Proxy) -> None:
    proxy.write(rate_limit={"per_client_ip": "1/hour"})
    async with proxy:
        running = proxy.current.runtime
        proxy.write(rate_limit={"per_client_ip": "often"}, hosts={"allowed": ["*bad*host"]})
        assert await proxy.reloader.reload() == "failed"
        assert proxy.current.runtime is running
        assert proxy.reloads("failed") == 1
        assert proxy.reloads("applied") == 0
        assert [await proxy.status() for _ in range(2)] == [200, 429]


async def test_a_runtime_that_fails_to_start_is_closed_and_the_old_one_serves(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with proxy:
        running = proxy.current.runtime
        sources_before = len(proxy.metrics._sources)

        async def broken_start(self: Runtime) -> None:
            raise OSError("cannot open a store")

        monkeypatch.setattr(Runtime, "start", broken_start)
        assert await proxy.reloader.reload() == "failed"
        assert proxy.current.runtime is running
        assert len(proxy.metrics._sources) == sources_before  # the failed one's sources are closed
        assert await proxy.status() == 200


async def test_restart_only_settings_keep_their_running_values_and_the_rest_applies(proxy: Proxy) -> None:
    async with proxy:
        proxy.write(server={"workers": 3, "listen": "127.0.0.1:1"}, cors={"origins": ["https://a.example"]})
        assert await proxy.reloader.reload() == "partial"
        settings = proxy.current.runtime.settings
        assert settings.server.workers == 1
        assert str(settings.server.listen) == "0.0.0.0:8080"
        assert settings.cors.origins == ["https://a.example"]
        assert proxy.reloads("partial") == 1


async def test_a_kept_rule_keeps_its_budget_and_a_changed_one_starts_afresh(proxy: Proxy) -> None:
    rules = [
        {"name": "kept", "rate": "2/hour", "path": "/kept/*"},
        {"name": "changed", "rate": "2/hour", "path": "/changed/*"},
    ]
    proxy.write(rate_limit={"rules": rules})
    async with proxy:
        for path in ("/kept/x", "/changed/x"):
            assert [await proxy.status(path=path) for _ in range(3)] == [200, 200, 429]
        memory = proxy.current.runtime.rate_limit_memory
        proxy.write(rate_limit={"rules": [rules[0], {**rules[1], "rate": "3/hour"}], "local_max_keys": 5000})
        assert await proxy.reloader.reload() == "applied"
        assert proxy.current.runtime.rate_limit_memory is memory
        assert memory.max_keys == 5000
        assert await proxy.status(path="/kept/x") == 429
        assert [await proxy.status(path="/changed/x") for _ in range(4)] == [200, 200, 200, 429]


async def test_a_new_key_prefix_starts_every_budget_afresh(proxy: Proxy) -> None:
    proxy.write(rate_limit={"per_client_ip": "1/hour"})
    async with proxy:
        assert [await proxy.status() for _ in range(2)] == [200, 429]
        memory = proxy.current.runtime.rate_limit_memory
        proxy.write(rate_limit={"per_client_ip": "1/hour", "key_prefix": "other:"})
        assert await proxy.reloader.reload() == "applied"
        assert proxy.current.runtime.rate_limit_memory is not memory
        assert await proxy.status() == 200


async def test_the_old_runtime_closes_only_after_its_request_in_flight(proxy: Proxy) -> None:
    async with proxy:
        old = proxy.current.runtime
        guard = next(guard for guard in old.chains[0].guards if isinstance(guard, ConcurrencyGuard))
        guard.in_flight += 1  # a request admitted by the old runtime that has not finished
        assert await proxy.reloader.reload() == "applied"
        assert proxy.current.runtime is not old
        for _ in range(5):
            await asyncio.sleep(0.06)
        assert old.metric_sources in proxy.metrics._sources  # still open: its request is in flight
        guard.in_flight -= 1
        await eventually(lambda: old.metric_sources not in proxy.metrics._sources)
        assert in_flight(old) == 0


async def test_signals_during_a_reload_fold_into_one_more_reload(proxy: Proxy) -> None:
    async with proxy:
        for _ in range(5):
            proxy.reloader.request()
        await eventually(lambda: proxy.reloader._task is not None and proxy.reloader._task.done())
        assert proxy.reloads("applied") == 1  # the signals came before it read the file: one read covers all
        proxy.reloader.request()
        await eventually(lambda: proxy.reloads("applied") == 2)


async def test_a_hundred_reloads_leave_one_runtime_and_no_tasks(proxy: Proxy) -> None:
    async with proxy:
        assert await proxy.status() == 200
        before, timers_before = live_tasks(), live_timers()
        for index in range(100):
            proxy.write(cors={"origins": [f"https://n{index}.example"]})
            assert await proxy.reloader.reload() == "applied"
            assert await proxy.status() == 200
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert len(proxy.metrics._sources) == 1
        # One probe and one pooled upstream connection, as before the reloads: the old ones are gone.
        assert live_tasks() == before
        assert before["Readiness._run"] == 1
        assert live_timers() <= timers_before  # no probe, pool ticker or log timer of an old runtime


async def test_signals_while_a_reload_runs_make_exactly_one_more(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    async with proxy:
        release, starting = asyncio.Event(), asyncio.Event()
        real_start = Runtime.start

        async def slow_start(self: Runtime) -> None:
            starting.set()
            await release.wait()
            await real_start(self)

        monkeypatch.setattr(Runtime, "start", slow_start)
        proxy.reloader.request()
        await starting.wait()  # the file was read; a change now needs another read
        proxy.write(cors={"origins": ["https://late.example"]})
        proxy.reloader.request()
        proxy.reloader.request()
        release.set()
        await eventually(lambda: proxy.reloader._task is not None and proxy.reloader._task.done())
        assert proxy.reloads("applied") == 2
        assert proxy.current.runtime.settings.cors.origins == ["https://late.example"]


async def test_a_draining_worker_ignores_reloads(proxy: Proxy) -> None:
    async with proxy:
        running = proxy.current.runtime
        proxy.lifecycle.draining = True
        proxy.reloader.request()
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert proxy.current.runtime is running
        assert proxy.reloads("applied") == proxy.reloads("failed") == 0


def test_the_supervisor_keeps_its_settings_when_the_file_is_invalid(proxy: Proxy) -> None:
    running = proxy.source.load()
    proxy.write(server={"workers": "many"})
    assert reloaded_settings(running, proxy.source) is running
    proxy.write(server={"workers": 4}, cors={"origins": ["https://a.example"]})
    fresh = reloaded_settings(running, proxy.source)
    assert fresh.server.workers == 1
    assert fresh.cors.origins == ["https://a.example"]
