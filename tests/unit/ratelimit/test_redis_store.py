"""RedisStore against the machine's Redis (127.0.0.1:6379), each test under a key prefix of its own:
a batch of checks is one script call that decides as the in-process store would, request after
request, and what it sends is byte for byte what redis-py would have packed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError

from guardproxy.ratelimit.gcra import Rate, parse_rate
from guardproxy.ratelimit.memory import MemoryStore
from guardproxy.ratelimit.redis_store import GCRA_SHA, RedisStore, _Batch, connect
from tests.support.redis import SHARED_REDIS_URL, shared_redis, start_redis, unique_prefix

Check = tuple[list[str], list[Rate], list[bool]]


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    store = RedisStore(connect(SHARED_REDIS_URL), budget=2.0)
    yield store
    await store.aclose()


def test_a_batch_is_packed_as_redis_py_packs_its_evalsha() -> None:
    store = RedisStore(connect(SHARED_REDIS_URL), budget=1.0)
    hourly, burst = parse_rate("100/hour"), parse_rate("10/second", burst=25)
    batch = _Batch()
    batch.requests = [
        (["gp:{ip:203.0.113.7}"], [hourly], [True]),
        (["gp:{key:é-ünïcode}", "gp:{route:orders}"], [burst, hourly], [False, True]),
    ]
    arguments = [1, hourly.interval_us, hourly.tolerance_us, 1]
    arguments += [2, burst.interval_us, burst.tolerance_us, 0, hourly.interval_us, hourly.tolerance_us, 1]
    keys = ["gp:{ip:203.0.113.7}", "gp:{key:é-ünïcode}", "gp:{route:orders}"]
    expected = b"".join(Connection().pack_command("EVALSHA", GCRA_SHA, len(keys), *keys, *arguments))
    assert store._pack(batch) == expected


async def test_a_batch_decides_as_the_in_process_store_request_after_request(store: RedisStore) -> None:
    prefix = unique_prefix()
    three, five = parse_rate("3/hour"), parse_rate("5/hour")
    a, b, c = f"{prefix}{{a}}", f"{prefix}{{b}}", f"{prefix}{{c}}"
    checks: list[Check] = [
        ([a], [three], [True]),
        ([a, b], [three, five], [True, True]),
        ([a, b], [three, five], [True, True]),
        ([a, b], [three, five], [True, True]),  # `a` refuses: `b` must not spend its budget
        ([b], [five], [True]),
        ([c, a], [five, three], [True, False]),  # `a` only counts (dry run): `c` still admits
        ([a], [three], [True]),
    ]
    memory = MemoryStore(max_keys=100, clock=lambda: 10**15)
    expected = [memory.check(keys, rates, enforce) for keys, rates, enforce in checks]

    decided = 0
    execute = store._execute

    async def counted(command: bytes) -> object:
        # Only calls that ran the script count: the machine's Redis may not hold it yet (a fresh
        # server, a flushed cache), and then the store loads it and sends the same call again.
        nonlocal decided
        reply = await execute(command)
        decided += 1
        return reply

    store._execute = counted  # type: ignore[method-assign]
    # Asked in one event-loop turn: one batch, one call, one instant on Redis' clock, so every
    # backlog is an exact multiple of an interval, as in the in-process store.
    assert await asyncio.gather(*(store.check(*check) for check in checks)) == expected
    assert decided == 1


async def test_a_script_cache_without_the_script_costs_one_reload_and_the_same_call_again(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")  # its own: flushing the shared one would disturb others
    store = RedisStore(connect(server.url), budget=2.0)
    try:
        sent: list[bytes] = []
        execute = store._execute

        async def recorded(command: bytes) -> object:
            sent.append(command)
            return await execute(command)

        store._execute = recorded  # type: ignore[method-assign]
        rate = parse_rate("2/hour")
        assert await store.check(["{k}"], [rate], [True]) == [0]
        assert len(sent) == 2  # NOSCRIPT, load, the same call again
        assert sent[0] == sent[1]
        server.client().script_flush()
        sent.clear()
        backlog = (await store.check(["{k}"], [rate], [True]))[0]
        assert rate.interval_us - 1_000_000 < backlog <= rate.interval_us  # the first check counted once
        assert len(sent) == 2
    finally:
        await store.aclose()
        server.kill()


async def test_a_foreign_value_under_a_key_fails_only_its_own_request(store: RedisStore) -> None:
    prefix = unique_prefix()
    foreign, fine = f"{prefix}{{foreign}}", f"{prefix}{{fine}}"
    shared_redis().rpush(foreign, "not a TAT")
    rate = parse_rate("10/minute")
    results = await asyncio.gather(
        store.check([foreign], [rate], [True]), store.check([fine], [rate], [True]), return_exceptions=True
    )
    assert isinstance(results[0], ResponseError)
    assert "WRONGTYPE" in str(results[0])
    assert results[1] == [0]


async def check_sequentially(store: RedisStore, checks: Sequence[Check]) -> list[list[int]]:
    return [await store.check(*check) for check in checks]


async def test_checks_in_separate_batches_keep_counting_on_the_same_keys(store: RedisStore) -> None:
    prefix = unique_prefix()
    rate = parse_rate("2/hour")
    key = f"{prefix}{{k}}"
    backlogs = await check_sequentially(store, [([key], [rate], [True])] * 3)
    # Redis' clock moves on between the calls: the backlog has shrunk by the time passed.
    assert backlogs[0] == [0]
    assert rate.interval_us - 1_000_000 < backlogs[1][0] <= rate.interval_us
    assert 2 * rate.interval_us - 1_000_000 < backlogs[2][0] <= 2 * rate.interval_us
    assert backlogs[2][0] + rate.interval_us > rate.tolerance_us  # the third is refused
    ttl = shared_redis().pttl(key)
    assert rate.interval_us // 1000 < ttl <= 2 * rate.interval_us // 1000


async def test_no_check_waits_without_bound_whatever_happens_inside_the_client(store: RedisStore) -> None:
    store.budget = 0.05
    stubborn = True

    async def stuck(command: bytes) -> object:
        # A client that ignores being cancelled: the call's own budget never ends it.
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if not stubborn:
                    raise

    store._execute = stuck  # type: ignore[method-assign]
    rate = parse_rate("10/minute")
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Two batches go out and hang; the third waits behind them and is never sent.
    first = [asyncio.ensure_future(store.check([f"k{i}"], [rate], [True])) for i in range(3)]
    await asyncio.sleep(0)
    second = [asyncio.ensure_future(store.check([f"l{i}"], [rate], [True])) for i in range(3)]
    await asyncio.sleep(0.01)
    third = [asyncio.ensure_future(store.check([f"m{i}"], [rate], [True])) for i in range(3)]
    results = await asyncio.gather(*first, *second, *third, return_exceptions=True)
    assert all(isinstance(result, TimeoutError) for result in results)
    assert loop.time() - started < 4 * 0.05 + 0.01 + 0.1
    assert len(store._tasks) == 2
    assert store._pending is None  # the third batch is not sent when the calls free up
    stubborn = False
    calls = list(store._tasks)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
