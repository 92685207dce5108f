"""Idempotency-Key through real guardproxy processes, a real counting upstream and real Redis.

The upstream (tests/support/idempotent_upstream.py) counts, per key, the requests that reached it
(`attempts`) and the ones it carried out (`executions`): every duplicate test proves from the
upstream's side that a key ran exactly once.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.integration.test_metrics import scrape, value
from tests.support.idempotent_upstream import start_idempotent_upstream
from tests.support.processes import UpstreamProcess, wait_until
from tests.support.redis import SHARED_REDIS_URL, RedisServer, shared_redis, start_redis, unique_prefix

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def counting() -> Iterator[UpstreamProcess]:
    upstream = start_idempotent_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.kill()


def new_key() -> str:
    return uuid.uuid4().hex


def counted(upstream: UpstreamProcess, key: str, auth: str = "") -> dict[str, int]:
    counts: dict[str, dict[str, int]] = httpx.get(f"{upstream.url}/_counts").json()
    return counts.get(f"{auth}|{key}", {"attempts": 0, "executions": 0})


def write_config(tmp_path: Path, idempotency: dict[str, Any] | None = None, **route: Any) -> str:
    settings = {
        "idempotency": idempotency or {},
        "routes": [
            {"name": "pay", "path": "/pay/**", "idempotency": {"enabled": True, **route}},
            {"name": "open", "path": "/open/**"},
        ],
    }
    path = tmp_path / f"guardproxy-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def shared_store(prefix: str | None = None) -> dict[str, str]:
    return {
        "GUARDPROXY_IDEMPOTENCY__REDIS_URL": SHARED_REDIS_URL,
        "GUARDPROXY_IDEMPOTENCY__KEY_PREFIX": prefix or unique_prefix(),
    }


def pay(
    url: str, key: str | None, body: bytes = b'{"amount": 42}', path: str = "/pay/1", **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Idempotency-Key"] = f'"{key}"'
    return httpx.post(url + path, content=body, headers=headers, timeout=10, **kwargs)


def in_thread(function: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function(*args, **kwargs)))
    thread.start()
    return thread, result


def assert_replay_of(replay: httpx.Response, first: httpx.Response) -> None:
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.status_code == first.status_code
    assert replay.content == first.content
    assert replay.headers["x-token"] == first.headers["x-token"]
    assert replay.headers["set-cookie"] == first.headers["set-cookie"]
    # guardproxy's own per-response fields are fresh, not replayed: one request ID, the new one.
    assert replay.headers.get_list("x-request-id") != first.headers.get_list("x-request-id")
    assert len(replay.headers.get_list("x-request-id")) == 1
    assert replay.headers["x-content-type-options"] == "nosniff"


# --- replays, conflicts and mismatches across replicas --------------------------------------------


def test_a_replay_on_another_replica_never_reaches_the_upstream(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config, env = write_config(tmp_path), shared_store()
    first_proxy = start_proxy(counting.url, "--config", config, env=env)
    second_proxy = start_proxy(counting.url, "--config", config, env=env)
    key = new_key()
    first = pay(first_proxy.url, key)
    assert first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    replays = [pay(proxy.url, key) for proxy in (second_proxy, first_proxy, second_proxy)]
    for replay in replays:
        assert_replay_of(replay, first)
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}
    # The bare spelling of the same key is the same key.
    assert_replay_of(pay(second_proxy.url, None, headers={"Idempotency-Key": key}), first)
    assert counted(counting, key) == {"attempts": 0, "executions": 0}


def test_concurrent_duplicates_on_two_replicas_run_once(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config, env = write_config(tmp_path), shared_store()
    proxies = [start_proxy(counting.url, "--config", config, env=env) for _ in range(2)]
    key = new_key()
    barrier = threading.Barrier(8)

    def send(index: int) -> httpx.Response:
        barrier.wait()
        return pay(proxies[index % 2].url, key, path="/pay/1?delay=1")

    threads = [in_thread(send, index) for index in range(8)]
    for thread, _ in threads:
        thread.join(timeout=30)
    responses: list[httpx.Response] = [result[0] for _, result in threads]
    originals = [r for r in responses if r.status_code == 200 and "idempotent-replayed" not in r.headers]
    assert len(originals) == 1
    for response in responses:
        if response is originals[0]:
            continue
        if response.status_code == 409:
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["retry-after"] == "1"
            assert response.json()["type"] == "urn:guardproxy:problem:idempotency-conflict"
        else:
            assert_replay_of(response, originals[0])
    assert sum(r.status_code == 409 for r in responses) >= 1
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}


def test_a_duplicate_in_flight_gets_409_then_the_replay(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config, env = write_config(tmp_path), shared_store()
    first_proxy = start_proxy(counting.url, "--config", config, env=env)
    second_proxy = start_proxy(counting.url, "--config", config, env=env)
    key = new_key()
    thread, result = in_thread(pay, first_proxy.url, key, path="/pay/1?delay=1.5")
    wait_until(lambda: counted(counting, f'"{key}"')["attempts"] == 1)
    conflict = pay(second_proxy.url, key, path="/pay/1?delay=1.5")
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == "A request with this Idempotency-Key is still being processed; retry later."
    thread.join(timeout=30)
    assert result[0].status_code == 200
    assert_replay_of(pay(second_proxy.url, key, path="/pay/1?delay=1.5"), result[0])
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}
    samples = scrape(second_proxy)
    assert value(samples, "guardproxy_idempotency_decisions_total", route="pay", decision="conflict") == 1
    assert value(samples, "guardproxy_idempotency_decisions_total", route="pay", decision="replayed") == 1
    assert value(scrape(first_proxy), "guardproxy_idempotency_responses_total", route="pay", result="stored") == 1
    wait_until(lambda: '"kind":"idempotency_conflict"' in second_proxy.log_text())


@pytest.mark.parametrize(
    "changed",
    [
        {"body": b'{"amount": 4200}'},
        {"path": "/pay/1?currency=usd"},
        {"body": b"", "path": "/pay/1"},
    ],
)
def test_the_same_key_for_another_request_is_422(start_proxy, counting, tmp_path, changed) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    key = new_key()
    assert pay(gp.url, key).status_code == 200
    mismatch = pay(gp.url, key, **changed)
    assert mismatch.status_code == 422
    assert mismatch.headers["content-type"] == PROBLEM
    assert mismatch.json()["type"] == "urn:guardproxy:problem:idempotency-mismatch"
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}
    wait_until(lambda: '"kind":"idempotency_mismatch"' in gp.log_text())


def test_keys_are_per_client_and_per_path(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, {"key": ["header:Authorization"]})
    gp = start_proxy(counting.url, "--config", config, env=shared_store())
    key = new_key()
    alice, bob = {"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"}
    first = pay(gp.url, key, headers=alice)
    # Bob's request with Alice's key is his own: it runs, and he never sees her response.
    bobs = pay(gp.url, key, headers=bob)
    assert bobs.status_code == 200
    assert "idempotent-replayed" not in bobs.headers
    assert bobs.headers["x-token"] != first.headers["x-token"]
    assert_replay_of(pay(gp.url, key, headers=alice), first)
    # Another resource is another entry, not a mismatch.
    other = pay(gp.url, key, path="/pay/2", headers=alice)
    assert other.status_code == 200
    assert "idempotent-replayed" not in other.headers
    assert counted(counting, f'"{key}"', "Bearer alice") == {"attempts": 2, "executions": 2}
    assert counted(counting, f'"{key}"', "Bearer bob") == {"attempts": 1, "executions": 1}


def test_entries_are_hashed_and_expire_with_the_ttl(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = unique_prefix()
    config = write_config(tmp_path, {"ttl": 2.0, "lock_ttl": 1.0})
    gp = start_proxy(counting.url, "--config", config, env=shared_store(prefix))
    key = new_key()
    first = pay(gp.url, key)
    entries = shared_redis().keys(f"{prefix}*")
    assert len(entries) == 1
    assert key.encode() not in entries[0]
    assert b"127.0.0.1" not in entries[0]
    assert 1000 < shared_redis().pttl(entries[0]) <= 2000
    assert_replay_of(pay(gp.url, key), first)
    time.sleep(2.2)
    again = pay(gp.url, key)
    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert again.headers["x-token"] != first.headers["x-token"]
    assert counted(counting, f'"{key}"') == {"attempts": 2, "executions": 2}


# --- what is not stored -------------------------------------------------------------------------------


def test_an_upstream_500_releases_the_key_and_the_retry_runs_then_replays(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    key = new_key()
    failed = pay(gp.url, key, path="/pay/1?fail_first=1")
    assert failed.status_code == 500
    retried = pay(gp.url, key, path="/pay/1?fail_first=1")
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert_replay_of(pay(gp.url, key, path="/pay/1?fail_first=1"), retried)
    assert counted(counting, f'"{key}"') == {"attempts": 2, "executions": 1}
    samples = scrape(gp)
    assert value(samples, "guardproxy_idempotency_responses_total", route="pay", result="server_error") == 1
    assert value(samples, "guardproxy_idempotency_responses_total", route="pay", result="stored") == 1


def test_a_final_4xx_is_replayed_but_a_429_is_not(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    declined, busy = new_key(), new_key()
    first = pay(gp.url, declined, path="/pay/1?status=402")
    assert first.status_code == 402
    assert_replay_of(pay(gp.url, declined, path="/pay/1?status=402"), first)
    assert pay(gp.url, busy, path="/pay/1?status=429").status_code == 429
    assert "idempotent-replayed" not in pay(gp.url, busy, path="/pay/1?status=429").headers
    assert counted(counting, f'"{declined}"')["attempts"] == 1
    assert counted(counting, f'"{busy}"')["attempts"] == 2


def test_an_unreachable_upstream_is_not_stored(start_proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.processes import free_port  # noqa: PLC0415

    prefix = unique_prefix()
    gp = start_proxy(f"http://127.0.0.1:{free_port()}", "--config", write_config(tmp_path), env=shared_store(prefix))
    key = new_key()
    assert [pay(gp.url, key).status_code for _ in range(2)] == [502, 502]
    wait_until(lambda: not shared_redis().keys(f"{prefix}*"))  # released, not left to expire
    samples = scrape(gp)
    assert value(samples, "guardproxy_idempotency_responses_total", route="pay", result="not_upstream") == 2


@pytest.mark.parametrize("chunked", [False, True])
def test_a_response_too_large_to_store_is_forwarded_whole_and_released(
    start_proxy, counting, tmp_path, chunked
) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, {"max_response_bytes": 1000})
    gp = start_proxy(counting.url, "--config", config, env=shared_store())
    key = new_key()
    path = "/pay/1?size=5000" + ("&chunked=1" if chunked else "")
    first = pay(gp.url, key, path=path)
    assert first.status_code == 200
    assert len(first.content) >= 5000
    if not chunked:
        assert orjson.loads(first.content)["padding"] == "x" * 5000
    again = pay(gp.url, key, path=path)
    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert counted(counting, f'"{key}"')["attempts"] == 2
    wait_until(lambda: "response too large to store for replay" in gp.log_text())
    assert value(scrape(gp), "guardproxy_idempotency_responses_total", route="pay", result="too_large") == 2


def test_a_client_that_leaves_mid_response_gets_the_replay_on_retry(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    key = new_key()
    body = b'{"amount": 42}'
    with socket.create_connection(("127.0.0.1", gp.port)) as sock:
        sock.sendall(
            b'POST /pay/1?size=400&chunked=1&stall=1 HTTP/1.1\r\nHost: api\r\nIdempotency-Key: "%s"\r\n'
            b"Content-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body)
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the head and the first half; then gone
    wait_until(lambda: value(scrape(gp), "guardproxy_idempotency_responses_total", route="pay", result="stored") == 1)
    replay = pay(gp.url, key, path="/pay/1?size=400&chunked=1&stall=1")
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == b"a" * 200 + b"b" * 200
    assert replay.headers["content-length"] == "400"
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}


# --- keys that are missing or malformed ----------------------------------------------------------------


def test_a_required_key_that_is_missing_is_400_and_never_forwarded(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path, required=True), env=shared_store())
    marker = new_key()
    refused = pay(gp.url, None, path=f"/pay/{marker}")
    assert refused.status_code == 400
    assert refused.headers["content-type"] == PROBLEM
    assert refused.json()["type"] == "urn:guardproxy:problem:idempotency-key-missing"
    assert counted(counting, "") == {"attempts": 0, "executions": 0}
    # Methods the route does not list are not asked for a key.
    assert httpx.put(f"{gp.url}/pay/1", content=b"x").status_code == 200
    wait_until(lambda: '"kind":"idempotency_missing_key"' in gp.log_text())


def test_without_required_a_request_without_key_is_forwarded_unprotected(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    assert [pay(gp.url, None).status_code for _ in range(2)] == [200, 200]


@pytest.mark.parametrize(
    "fields",
    [
        [("Idempotency-Key", "a" * 256)],
        [("Idempotency-Key", '""')],
        [("Idempotency-Key", "one"), ("Idempotency-Key", "two")],
        [("Idempotency-Key", "a, b")],
        [("Idempotency-Key", '"a";x=1')],
        [("Idempotency-Key", "has space")],
    ],
)
def test_a_malformed_key_is_400_and_never_forwarded(start_proxy, counting, tmp_path, fields) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    before = httpx.get(f"{counting.url}/_counts").json()
    refused = httpx.post(f"{gp.url}/pay/1", content=b"{}", headers=fields)
    assert refused.status_code == 400
    assert refused.json()["type"] == "urn:guardproxy:problem:idempotency-key-malformed"
    assert "request_id" in refused.json()
    assert httpx.get(f"{counting.url}/_counts").json() == before


def test_a_route_without_idempotency_ignores_the_header(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    key = new_key()
    responses = [pay(gp.url, key, path="/open/1") for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert all("idempotent-replayed" not in r.headers for r in responses)
    assert counted(counting, f'"{key}"')["executions"] == 2


def test_a_chunked_body_over_the_route_limit_is_413_before_any_lock(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = unique_prefix()
    settings = yaml.safe_load(Path(write_config(tmp_path)).read_text())
    settings["routes"][0]["body_limit"] = {"max_bytes": 100}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(settings))
    gp = start_proxy(counting.url, "--config", str(path), env=shared_store(prefix))
    key = new_key()

    def chunks() -> Iterator[bytes]:
        yield b"x" * 80
        yield b"x" * 80

    refused = httpx.post(f"{gp.url}/pay/1", content=chunks(), headers={"Idempotency-Key": key})
    assert refused.status_code == 413
    assert counted(counting, key)["attempts"] == 0
    assert not shared_redis().keys(f"{prefix}*")


# --- the store in trouble --------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_mode", ["pass", "refuse"])
def test_redis_killed_mid_request(start_proxy, counting, tmp_path, redis_server, fail_mode) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, {"fail_mode": fail_mode, "redis_url": redis_server.url})
    gp = start_proxy(counting.url, "--config", config)
    key, later = new_key(), new_key()
    thread, result = in_thread(pay, gp.url, key, path="/pay/1?delay=1")
    wait_until(lambda: counted(counting, f'"{key}"')["attempts"] == 1)
    redis_server.kill()
    thread.join(timeout=30)
    # The request in flight still gets its whole answer: never a 5xx, never a stored half.
    assert result[0].status_code == 200
    assert orjson.loads(result[0].content)["path"] == "/pay/1"
    wait_until(lambda: "idempotency store failed to keep a response" in gp.log_text())
    after = pay(gp.url, later)
    if fail_mode == "pass":
        assert after.status_code == 200
        assert counted(counting, f'"{later}"') == {"attempts": 1, "executions": 1}
        wait_until(lambda: "forwarded without duplicate protection" in gp.log_text())
        decision = "unprotected"
    else:
        assert after.status_code == 503
        assert after.headers["content-type"] == PROBLEM
        assert after.headers["retry-after"] == "1"
        assert after.json()["type"] == "urn:guardproxy:problem:idempotency-unavailable"
        assert "redis" not in after.text.lower()
        assert "127.0.0.1" not in after.text
        assert counted(counting, f'"{later}"')["attempts"] == 0
        decision = "refused"
    samples = scrape(gp)
    assert value(samples, "guardproxy_idempotency_decisions_total", route="pay", decision=decision) == 1
    assert value(samples, "guardproxy_idempotency_store_errors_total", kind="connection") >= 2
    assert value(samples, "guardproxy_idempotency_responses_total", route="pay", result="store_failed") == 1


def test_redis_down_from_the_start_is_not_a_failed_start(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.processes import free_port  # noqa: PLC0415

    config = write_config(tmp_path, {"fail_mode": "refuse", "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    gp = start_proxy(counting.url, "--config", config)
    statuses = [pay(gp.url, new_key()).status_code for _ in range(5)]
    assert statuses == [503] * 5
    # Routes without idempotency do not notice.
    assert pay(gp.url, new_key(), path="/open/1").status_code == 200


# --- the in-memory store ------------------------------------------------------------------------------------


def test_the_in_memory_store_serves_one_process(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path))
    key = new_key()
    thread, result = in_thread(pay, gp.url, key, path="/pay/1?delay=1")
    wait_until(lambda: counted(counting, f'"{key}"')["attempts"] == 1)
    assert pay(gp.url, key, path="/pay/1?delay=1").status_code == 409
    thread.join(timeout=30)
    assert_replay_of(pay(gp.url, key, path="/pay/1?delay=1"), result[0])
    assert pay(gp.url, key, path="/pay/1?delay=1", body=b"other").status_code == 422
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}


def test_a_worker_killed_mid_request_leaves_only_a_lock_that_expires(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The crash case: the upstream ran the request but nobody stored its answer. Until the lock
    expires a retry gets 409 (never a second execution); after lock_ttl the key is free again."""
    prefix = unique_prefix()
    config, env = write_config(tmp_path, {"ttl": 30.0, "lock_ttl": 3.0}), shared_store(prefix)
    doomed = start_proxy(counting.url, "--config", config, env=env)
    survivor = start_proxy(counting.url, "--config", config, env=env)
    key = new_key()

    def cut_off() -> BaseException | None:
        try:
            pay(doomed.url, key, path="/pay/1?delay=1")
        except httpx.HTTPError as exc:
            return exc
        return None

    thread, result = in_thread(cut_off)
    wait_until(lambda: counted(counting, f'"{key}"')["attempts"] == 1)
    doomed.process.kill()
    thread.join(timeout=30)
    assert isinstance(result[0], httpx.HTTPError)  # the client never got an answer
    (entry,) = shared_redis().keys(f"{prefix}*")
    assert 0 < shared_redis().pttl(entry) <= 3000
    assert pay(survivor.url, key, path="/pay/1?delay=1").status_code == 409
    wait_until(lambda: not shared_redis().exists(entry), timeout=5)
    retried = pay(survivor.url, key, path="/pay/1?delay=1")
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert counted(counting, f'"{key}"') == {"attempts": 2, "executions": 2}


def test_the_uncompressed_answer_is_stored_and_encoded_afresh_for_each_client(start_proxy, counting, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(counting.url, "--config", write_config(tmp_path), env=shared_store())
    key = new_key()
    first = pay(gp.url, key, path="/pay/1?size=4000", headers={"Accept-Encoding": "gzip"})
    assert first.headers["content-encoding"] == "gzip"
    replay = pay(gp.url, key, path="/pay/1?size=4000", headers={"Accept-Encoding": "identity"})
    assert replay.headers["idempotent-replayed"] == "true"
    assert "content-encoding" not in replay.headers
    assert replay.content == first.content  # httpx decoded the first: the same JSON
    assert int(replay.headers["content-length"]) == len(replay.content)
    brotli = pay(gp.url, key, path="/pay/1?size=4000", headers={"Accept-Encoding": "br"})
    assert brotli.headers["content-encoding"] == "br"
    assert brotli.content == first.content
    assert counted(counting, f'"{key}"') == {"attempts": 1, "executions": 1}
