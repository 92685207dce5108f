"""proxy/pool.py: what the keep-alive pool costs per request beyond its socket calls."""

from __future__ import annotations

import asyncio

import pytest

from guardproxy.proxy.pool import ConnectionPool
from guardproxy.proxy.transport import UpstreamRequest
from guardproxy.upstream import origin_of


def pool_for(url: str) -> ConnectionPool:
    return ConnectionPool(origin_of(url), max_connections=4, max_idle_connections=4, idle_timeout=30, ssl_context=None)


async def get(pool: ConnectionPool) -> bytes:
    request = UpstreamRequest(b"GET", b"/", [(b"host", b"upstream")], None, None, 5.0, 5.0)
    response = await pool.send(request)
    body = await response.read_chunk()
    response.close()
    return body


async def test_the_pool_looks_the_running_loop_up_once_not_per_request(
    upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On Python 3.11 each asyncio.get_running_loop() is a getpid() system call. A compiled class
    # has no __dict__, so a functools.cached_property there looked the loop up at every use: two
    # system calls per request that the pure-Python build did not make.
    lookups = 0
    running_loop = asyncio.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        nonlocal lookups
        lookups += 1
        return running_loop()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    pool = pool_for(upstream_url)
    try:
        bodies = [await get(pool) for _ in range(20)]
    finally:
        await pool.aclose()
    assert bodies == [b"{}"] * 20
    assert pool.open_connections == 0  # closed by aclose: the one kept-alive connection was reused
    assert lookups <= 1


async def test_a_request_reuses_the_idle_connection_the_last_one_released(upstream_url: str) -> None:
    pool = pool_for(upstream_url)
    try:
        await get(pool)
        await get(pool)
        assert pool.open_connections == 1
    finally:
        await pool.aclose()
