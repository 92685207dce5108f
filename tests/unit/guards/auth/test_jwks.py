"""RemoteKeySet against a real JWKS endpoint (a thread-served HTTP server on a loopback port)."""

from __future__ import annotations

import asyncio

from guardproxy.guards.auth.jwks import RefreshPolicy, RemoteKeySet
from guardproxy.guards.auth.policy import _claim_matches, compile_claims
from tests.support.jwks import SigningKey, jwks_server
from tests.support.processes import free_port

ALGORITHMS = ["RS256", "ES256"]


def remote(
    url: str, fetches: list[tuple[str, str]], minimum: float = 0.2, clock: list[float] | None = None
) -> RemoteKeySet:
    policy = RefreshPolicy(interval=60, minimum=minimum, maximum=600, timeout=1)
    count = lambda *labels: fetches.append(labels)  # noqa: E731
    if clock is None:
        return RemoteKeySet("idp", url, ALGORITHMS, policy, count_fetch=count)
    return RemoteKeySet("idp", url, ALGORITHMS, policy, count_fetch=count, clock=lambda: clock[0])


async def test_fetch_keep_last_good_and_rate_limit() -> None:
    key = SigningKey.ec("e1")
    fetches: list[tuple[str, str]] = []
    with jwks_server(key) as idp:
        now = [1000.0]
        keys = remote(idp.url, fetches, minimum=30, clock=now)
        await keys.start()
        try:
            assert keys.keys is not None
            assert list(keys.keys.by_kid) == ["e1"]
            assert not keys.may_refresh_now()  # just fetched
            now[0] += 29.9
            assert not keys.may_refresh_now()
            now[0] += 0.2
            assert keys.may_refresh_now()
            idp.status = 503
            assert await keys.refresh() is True  # failed, but the last good keys stay
            assert list(keys.keys.by_kid) == ["e1"]
            assert keys.report()["last_error"] == "answered 503"
            idp.status = 200
            idp.document = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}
            assert await keys.refresh() is True
            assert list(keys.keys.by_kid) == ["e1"]  # a set with no usable key replaces nothing
            assert fetches == [("idp", "ok"), ("idp", "error"), ("idp", "error")]
        finally:
            await keys.aclose()


async def test_concurrent_refreshes_share_one_fetch_and_survive_cancelled_waiters() -> None:
    key = SigningKey.rsa("r1")
    fetches: list[tuple[str, str]] = []
    with jwks_server(key) as idp:
        keys = remote(idp.url, fetches)
        await keys.start()
        try:
            idp.delay = 0.3
            before = len(idp.requests)
            waiters = [asyncio.create_task(keys.refresh()) for _ in range(20)]
            await asyncio.sleep(0.05)
            waiters[0].cancel()  # a client that went away
            results = await asyncio.gather(*waiters[1:])
            assert all(results)
            assert len(idp.requests) == before + 1
            # The next refresh is a new fetch, not the finished one's stale answer.
            idp.delay = 0
            idp.serve(key, SigningKey.ec("e2"))
            await keys.refresh()
            assert keys.keys is not None
            assert set(keys.keys.by_kid) == {"r1", "e2"}
        finally:
            await keys.aclose()


async def test_never_fetched_keys_report_and_retry_soon() -> None:
    fetches: list[tuple[str, str]] = []
    keys = remote(f"http://127.0.0.1:{free_port()}/jwks.json", fetches, minimum=5)
    await keys.start()
    try:
        assert keys.keys is None
        report = keys.report()
        assert report["ok"] is False
        assert "unreachable" in str(report["last_error"])
        assert keys._next_delay == 1.0  # then 2, 4 ... up to min_refresh_interval
    finally:
        await keys.aclose()


def test_claim_matchers_compare_types_too() -> None:
    ((_, allowed),) = compile_claims({"level": [1, "gold"]})
    assert _claim_matches(1, allowed)
    assert _claim_matches("gold", allowed)
    assert not _claim_matches(True, allowed)
    assert not _claim_matches("1", allowed)
    assert _claim_matches(["silver", "gold"], allowed)
    assert not _claim_matches({"gold": 1}, allowed)
    assert not _claim_matches(None, allowed)


async def test_an_unchanged_document_keeps_the_key_set_object() -> None:
    """Cached verifications are tied to the KeySet object: a refresh that brings the same keys
    must not send every cached token through a signature check again."""
    key = SigningKey.ec("e1")
    with jwks_server(key) as idp:
        keys = remote(idp.url, [])
        await keys.start()
        try:
            first = keys.keys
            await keys.refresh()
            assert keys.keys is first
            idp.serve(key, SigningKey.ec("e2"))
            await keys.refresh()
            assert keys.keys is not first
        finally:
            await keys.aclose()
