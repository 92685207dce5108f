"""Both stores keep the same promises (the Redis one against the machine's Redis, under a prefix
of its own), and the ledger holds a failing store to its budget behind a circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from guardproxy.idempotency.ledger import BREAKER_COOLDOWN, BREAKER_FAILURES, Ledger, StoreUnavailableError
from guardproxy.idempotency.redis_store import RedisIdempotencyStore
from guardproxy.idempotency.store import IdempotencyStore, MemoryIdempotencyStore
from tests.support.processes import free_port
from tests.support.redis import SHARED_REDIS_URL, shared_redis, start_redis, unique_prefix


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[IdempotencyStore, str]]:
    if request.param == "memory":
        memory = MemoryIdempotencyStore(max_keys=100)
        yield memory, "k:"
        return
    prefix = unique_prefix()
    redis_store = RedisIdempotencyStore.from_url(SHARED_REDIS_URL)
    await redis_store.start()
    yield redis_store, prefix
    await redis_store.aclose()
    client = shared_redis()
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


async def test_the_first_takes_the_lock_and_the_others_see_it(store: tuple[IdempotencyStore, str]) -> None:
    backend, prefix = store
    key = prefix + "{a}"
    assert await backend.acquire(key, b"L-first", 5000) is None
    found = await backend.acquire(key, b"L-second", 5000)
    assert found is not None
    value, left = found
    assert value == b"L-first"
    assert 0 < left <= 5000


async def test_only_the_lock_holder_completes_or_releases(store: tuple[IdempotencyStore, str]) -> None:
    backend, prefix = store
    key = prefix + "{b}"
    await backend.acquire(key, b"L-mine", 5000)
    assert not await backend.complete(key, b"L-theirs", b"D-record", 10_000)
    assert not await backend.release(key, b"L-theirs")
    assert await backend.complete(key, b"L-mine", b"D-record", 10_000)
    # Done: the lock is gone, so neither a late release nor a second completion changes it.
    assert not await backend.release(key, b"L-mine")
    assert not await backend.complete(key, b"L-mine", b"D-other", 10_000)
    found = await backend.acquire(key, b"L-next", 5000)
    assert found is not None
    assert found[0] == b"D-record"
    assert 5000 < found[1] <= 10_000


async def test_a_released_key_is_free_again(store: tuple[IdempotencyStore, str]) -> None:
    backend, prefix = store
    key = prefix + "{c}"
    await backend.acquire(key, b"L-1", 5000)
    assert await backend.release(key, b"L-1")
    assert await backend.acquire(key, b"L-2", 5000) is None


async def test_locks_and_records_expire_on_their_own_in_redis() -> None:
    prefix = unique_prefix()
    backend = RedisIdempotencyStore.from_url(SHARED_REDIS_URL)
    try:
        await backend.acquire(prefix + "{lock}", b"L-1", 100)
        await backend.acquire(prefix + "{done}", b"L-2", 5000)
        await backend.complete(prefix + "{done}", b"L-2", b"D", 150)
        await asyncio.sleep(0.25)
        assert await backend.acquire(prefix + "{lock}", b"L-3", 5000) is None
        assert await backend.acquire(prefix + "{done}", b"L-4", 5000) is None
        assert 0 < shared_redis().pttl(prefix + "{done}") <= 5000
    finally:
        await backend.aclose()
        shared_redis().delete(prefix + "{lock}", prefix + "{done}")


async def test_scripts_are_loaded_again_after_a_script_flush(tmp_path: Path) -> None:
    # A Redis of its own: flushing the shared one's scripts would disturb other tests.
    server = start_redis(tmp_path / "redis")
    backend = RedisIdempotencyStore.from_url(server.url)
    try:
        await backend.start()
        server.client().script_flush()
        assert await backend.acquire("{x}", b"L", 1000) is None
        assert await backend.complete("{x}", b"L", b"D", 1000)
    finally:
        await backend.aclose()
        server.kill()


async def test_memory_entries_expire_and_the_store_stays_bounded() -> None:
    clock = Clock()
    memory = MemoryIdempotencyStore(max_keys=3, clock=clock)
    await memory.acquire("old", b"L", 1000)
    clock.now += 2
    assert await memory.acquire("old", b"L2", 1000) is None  # the first lock expired
    for name in ("a", "b", "c", "d"):
        await memory.acquire(name, b"L", 60_000)
    assert len(memory) == 3
    assert await memory.acquire("old", b"L3", 1000) is None  # the oldest went first
    clock.now += 61
    await memory.acquire("e", b"L", 1000)
    assert len(memory) == 1  # a full store sweeps what has expired before dropping anything live


async def test_the_memory_store_is_bounded_in_bytes_too() -> None:
    memory = MemoryIdempotencyStore(max_keys=100, max_bytes=2500)
    for name in "abc":
        await memory.acquire(name, b"L", 60_000)
        assert await memory.complete(name, b"L", b"D" * 999, 60_000)
    assert len(memory) == 2  # the third response pushed the first out
    assert memory.bytes_held <= 2500
    assert await memory.acquire("a", b"L2", 1000) is None
    await memory.release("a", b"L2")
    assert memory.bytes_held == 2 * (1 + 999)


class FailingStore:
    backend = "test"

    def __init__(self) -> None:
        self.calls = 0
        self.fail = True
        self.hang = False

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def acquire(self, key: str, lock: bytes, lock_ttl_ms: int) -> tuple[bytes, int] | None:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(10)
        if self.fail:
            raise RedisConnectionError("refused")
        return None

    async def complete(self, *_: Any) -> bool:
        raise RedisConnectionError("refused")

    async def release(self, *_: Any) -> bool:
        raise RedisConnectionError("refused")


async def test_a_hanging_store_costs_a_request_its_budget_only() -> None:
    failing = FailingStore()
    failing.hang = True
    errors: list[str] = []
    ledger = Ledger(failing, timeout=0.05, on_error=errors.append)
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreUnavailableError):
        await ledger.acquire("k", b"L", 1000)
    assert asyncio.get_running_loop().time() - started < 0.5
    assert errors == ["timeout"]


async def test_the_circuit_opens_after_failures_and_one_request_probes_after_the_cooldown() -> None:
    failing, clock = FailingStore(), Clock()
    errors: list[str] = []
    ledger = Ledger(failing, timeout=1.0, on_error=errors.append, clock=clock)
    for _ in range(BREAKER_FAILURES):
        with pytest.raises(StoreUnavailableError):
            await ledger.acquire("k", b"L", 1000)
    assert ledger.report()["circuit"] == "open"
    with pytest.raises(StoreUnavailableError):
        await ledger.acquire("k", b"L", 1000)
    assert failing.calls == BREAKER_FAILURES  # open: nobody waits on the store
    clock.now += BREAKER_COOLDOWN + 0.1
    failing.fail = False
    assert await ledger.acquire("k", b"L", 1000) is None
    assert ledger.report() == {
        "ok": True,
        "backend": "test",
        "state": "ok",
        "circuit": "closed",
        "detail": "store answering",
    }
    assert errors == ["connection"] * BREAKER_FAILURES


async def test_completion_and_release_failures_are_reported_not_raised() -> None:
    errors: list[str] = []
    ledger = Ledger(FailingStore(), timeout=1.0, on_error=errors.append)
    assert await ledger.complete("k", b"L", b"D", 1000) is None
    await ledger.release("k", b"L")
    assert errors == ["connection", "connection"]
    assert ledger.report()["state"] == "degraded"


async def test_a_redis_that_is_not_there_is_unavailable_within_the_budget() -> None:
    backend = RedisIdempotencyStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    await backend.start()  # no Redis: still starts
    errors: list[str] = []
    ledger = Ledger(backend, timeout=0.5, on_error=errors.append)
    try:
        with pytest.raises(StoreUnavailableError):
            await ledger.acquire("k", b"L", 1000)
        assert errors == ["connection"]
    finally:
        await backend.aclose()


def test_calls_are_packed_as_redis_py_packs_its_evalsha() -> None:
    from redis.asyncio.connection import Connection  # noqa: PLC0415

    from guardproxy.idempotency.redis_store import _SHA_HEADS, _SHAS, COMPLETE, _pack  # noqa: PLC0415

    args: tuple[bytes | int, ...] = (b"L\x00\xff-lock", b"D\r\n-record", 86_400_000)
    expected = b"".join(Connection().pack_command("EVALSHA", _SHAS[COMPLETE], 1, "gp:{é}", *args))
    assert _pack(_SHA_HEADS[COMPLETE], "gp:{é}", args) == expected


async def test_concurrent_calls_share_pipelined_writes_and_each_gets_its_own_reply(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    backend = RedisIdempotencyStore.from_url(server.url)
    try:
        await backend.start()
        server.client().script_flush()  # the first write meets NOSCRIPT for every call in it
        results = await asyncio.gather(
            *(backend.acquire(f"{{k{i % 10}}}", b"L%d" % i, 60_000) for i in range(100)),
        )
        # Per key, the first call in order took the lock; the nine after it saw that lock.
        for i, result in enumerate(results):
            if i < 10:
                assert result is None
            else:
                assert result is not None
                assert result[0] == b"L%d" % (i % 10)
        completed = await asyncio.gather(
            *(backend.complete(f"{{k{i}}}", b"L%d" % i, b"D%d" % i, 60_000) for i in range(10)),
            backend.complete("{k0}", b"not mine", b"D", 60_000),
        )
        assert completed == [True] * 10 + [False]
        clients = server.client().client_list()
        assert len(clients) <= 3  # two pipelined writes at most, and this test's own client
    finally:
        await backend.aclose()
        server.kill()


async def test_a_dead_server_fails_every_call_of_a_write() -> None:
    backend = RedisIdempotencyStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        results = await asyncio.gather(
            *(backend.acquire(f"{{k{i}}}", b"L", 1000) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, RedisConnectionError) for result in results)
    finally:
        await backend.aclose()
