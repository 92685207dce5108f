"""Rate limiting through real guardproxy processes, a real upstream and real Redis servers."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.test_metrics import scrape, value
from tests.support.processes import free_port, port_open, wait_until
from tests.support.redis import (
    SHARED_REDIS_URL,
    RedisServer,
    free_cluster_port,
    shared_redis,
    start_redis,
    unique_prefix,
)

POLICY = re.compile(r'^"(?P<name>[A-Za-z0-9_.-]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
STATUS = re.compile(r'^"(?P<name>[A-Za-z0-9_.-]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def items(header: str) -> list[str]:
    return [item.strip() for item in header.split(",")]


def shared_store_env() -> dict[str, str]:
    # Each test gets budgets of its own on the machine's Redis.
    return {"GUARDPROXY_RATE_LIMIT__REDIS_URL": SHARED_REDIS_URL, "GUARDPROXY_RATE_LIMIT__KEY_PREFIX": unique_prefix()}


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "guardproxy.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.kill()


def statuses(url: str, count: int, **kwargs) -> list[int]:  # type: ignore[no-untyped-def]
    with httpx.Client() as client:
        return [client.get(url, **kwargs).status_code for _ in range(count)]


# --- the happy paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_client_gets_its_burst_then_429_problems_with_headers(start_proxy, upstream, store: str) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "3/minute", env=shared_store_env() if store == "redis" else None)
    with httpx.Client() as client:
        allowed = [client.get(f"{gp.url}/echo") for _ in range(3)]
        refused = client.get(f"{gp.url}/echo?secret=1")
    assert [response.status_code for response in allowed] == [200, 200, 200]
    assert [response.headers["ratelimit"] for response in allowed] == [
        '"per-ip";r=2;t=20',
        '"per-ip";r=1;t=40',
        '"per-ip";r=0;t=60',
    ]
    assert all(response.headers["ratelimit-policy"] == '"per-ip";q=3;w=60' for response in allowed)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["ratelimit-policy"] == '"per-ip";q=3;w=60'
    assert STATUS.match(refused.headers["ratelimit"])["r"] == "0"  # type: ignore[index]
    retry_after = refused.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 20
    problem = refused.json()
    assert problem["type"] == "urn:guardproxy:problem:rate-limited"
    assert problem["status"] == 429
    assert problem["request_id"] == refused.headers["x-request-id"]
    assert "per-ip" in problem["detail"]
    # Security headers and request IDs apply to the refusal like to any answer.
    assert refused.headers["x-content-type-options"] == "nosniff"


def test_refused_requests_never_reach_the_upstream(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    seen.append(data.split(b"\r\n", 1)[0])
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    try:
        gp = start_proxy(f"http://127.0.0.1:{port}", "--rate-limit", "2/hour")
        assert statuses(f"{gp.url}/counted", 6) == [200, 200, 429, 429, 429, 429]
        assert seen == [b"GET /counted HTTP/1.1"] * 2
    finally:
        listener.close()


def test_two_instances_sharing_redis_admit_exactly_the_limit_under_concurrency(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    # Exactness is what this test checks, not the time budget (tested below): a budget this
    # machine's noise cannot exhaust keeps every decision with Redis, as the last assert checks.
    env = {**shared_store_env(), "GUARDPROXY_RATE_LIMIT__TIMEOUT": "0.5"}
    first = start_proxy(upstream.url, "--rate-limit", "50/hour", env=env)
    second = start_proxy(upstream.url, "--rate-limit", "50/hour", env=env)

    async def flood() -> list[int]:
        limits = httpx.Limits(max_connections=150)
        async with (
            httpx.AsyncClient(limits=limits, timeout=30) as one,
            httpx.AsyncClient(limits=limits, timeout=30) as two,
        ):
            requests = [
                (one if index % 2 else two).get(f"{(first if index % 2 else second).url}/echo") for index in range(300)
            ]
            return [response.status_code for response in await asyncio.gather(*requests)]

    counts = Counter(asyncio.run(flood()))
    assert counts == {200: 50, 429: 250}
    # Both instances decided: neither kept a budget of its own.
    for gp in (first, second):
        samples = scrape(gp)
        assert value(samples, "guardproxy_ratelimit_decisions_total", rule="per-ip", decision="limited") > 0
        assert value(samples, "guardproxy_ratelimit_store_errors_total", kind="timeout") == 0
        assert value(samples, "guardproxy_ratelimit_fallback_active") == 0


def test_several_rules_on_one_route_refuse_when_any_enforcing_one_does(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = config(
        tmp_path,
        """
routes:
  - name: login
    path: /login
    methods: [POST]
rate_limit:
  per_client_ip: 10/hour
  rules:
    - name: login
      rate: 2/hour
      routes: [login]
""",
    )
    gp = start_proxy(upstream.url, "--config", path)
    with httpx.Client() as client:
        logins = [client.post(f"{gp.url}/login") for _ in range(3)]
        other = client.get(f"{gp.url}/echo")
    assert [response.status_code for response in logins] == [404, 404, 429]  # the upstream has no /login
    assert items(logins[0].headers["ratelimit-policy"]) == ['"per-ip";q=10;w=3600', '"login";q=2;w=3600']
    assert items(logins[1].headers["ratelimit"]) == ['"per-ip";r=8;t=720', '"login";r=0;t=3600']
    assert "login" in logins[2].json()["detail"]
    assert "per-ip" not in logins[2].json()["detail"]
    # The refused login spent nothing of the per-IP budget: 10 - 2 logins - this one = 7.
    assert other.status_code == 200
    assert other.headers["ratelimit-policy"] == '"per-ip";q=10;w=3600'
    assert other.headers["ratelimit"] == '"per-ip";r=7;t=1080'


def test_a_header_keyed_rule_gives_each_api_key_its_budget_and_keyless_clients_their_address(  # type: ignore[no-untyped-def]
    start_proxy, upstream, tmp_path
) -> None:
    path = config(
        tmp_path,
        """
rate_limit:
  rules:
    - name: per-key
      rate: 2/hour
      key: [header:X-Api-Key]
""",
    )
    gp = start_proxy(upstream.url, "--config", path)
    url = f"{gp.url}/echo"
    assert statuses(url, 3, headers={"X-Api-Key": "alpha"}) == [200, 200, 429]
    assert statuses(url, 3, headers={"X-Api-Key": "beta"}) == [200, 200, 429]
    assert statuses(url, 3) == [200, 200, 429]
    # The API key is hashed into the store key and never logged.
    assert "alpha" not in gp.log_text()


def test_dry_run_rules_refuse_nothing_advertise_nothing_but_log_and_count(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = config(
        tmp_path,
        """
rate_limit:
  rules:
    - name: trial
      rate: 1/hour
      mode: dry-run
""",
    )
    gp = start_proxy(upstream.url, "--config", path)
    with httpx.Client() as client:
        responses = [client.get(f"{gp.url}/echo") for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert not any("ratelimit" in response.headers for response in responses)
    samples = scrape(gp)
    assert value(samples, "guardproxy_ratelimit_decisions_total", rule="trial", decision="dry_run_limited") == 2
    assert value(samples, "guardproxy_ratelimit_decisions_total", rule="trial", decision="allowed") == 1
    events = [orjson.loads(line) for line in gp.log_text().splitlines() if "would refuse" in line]
    assert [event["rule"] for event in events] == ["trial", "trial"]
    assert {event["request_id"] for event in events} == {r.headers["x-request-id"] for r in responses[1:]}


def test_rules_match_by_path_and_method(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = config(
        tmp_path,
        """
rate_limit:
  rules:
    - name: writes
      rate: 1/hour
      path: /status/**
      methods: [POST]
""",
    )
    gp = start_proxy(upstream.url, "--config", path)
    with httpx.Client() as client:
        assert [client.post(f"{gp.url}/status/201").status_code for _ in range(2)] == [201, 429]
        reads = client.get(f"{gp.url}/status/200")
        assert reads.status_code == 200
        assert "ratelimit" not in reads.headers
        # Percent-encoding does not dodge a path rule.
        assert client.post(f"{gp.url}/%73tatus/201").status_code == 429


# --- hostile clients ------------------------------------------------------------------------------


def test_a_spoofed_forwarded_for_from_an_untrusted_peer_buys_no_fresh_budget(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "2/hour")
    with httpx.Client() as client:
        codes = [
            client.get(
                f"{gp.url}/echo", headers={"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=198.51.100.{n}"}
            ).status_code
            for n in range(6)
        ]
    assert codes == [200, 200, 429, 429, 429, 429]


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "1/hour", "--trusted-proxy", "127.0.0.1/32")
    with httpx.Client() as client:
        first = [client.get(f"{gp.url}/echo", headers={"X-Forwarded-For": "203.0.113.1"}).status_code for _ in range(2)]
        second = client.get(f"{gp.url}/echo", headers={"X-Forwarded-For": "203.0.113.2"}).status_code
    assert first == [200, 429]
    assert second == 200


def test_a_client_spraying_api_keys_is_still_limited_by_a_combined_key(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = config(
        tmp_path,
        """
rate_limit:
  per_client_ip: 3/hour
  rules:
    - name: per-key
      rate: 1/hour
      key: [header:X-Api-Key]
""",
    )
    gp = start_proxy(upstream.url, "--config", path)
    codes = [statuses(f"{gp.url}/echo", 1, headers={"X-Api-Key": f"k{n}"})[0] for n in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_refused_floods_do_not_extend_the_lockout(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    # 2 per 4 s: one interval (2 s) after the first of two admitted requests, one fits again; two
    # fit only after 4 s. Timed from the admitted ones, not from the flood, which a slow machine
    # (or a run under coverage) may take a while to send.
    gp = start_proxy(upstream.url, "--rate-limit", "2/4s", env=shared_store_env())
    started = time.monotonic()
    assert statuses(f"{gp.url}/echo", 2) == [200, 200]
    admitted = time.monotonic()
    assert set(statuses(f"{gp.url}/echo", 40)) == {429}
    assert time.monotonic() < admitted + 2, "the flood took longer than an interval: nothing left to judge"
    time.sleep(admitted + 2 - time.monotonic())  # however hard it was refused, one request fits again
    assert statuses(f"{gp.url}/echo", 2) == [200, 429]
    assert time.monotonic() < started + 4, "too slow to tell one admitted request from a whole new burst"


# --- Redis in trouble -------------------------------------------------------------------------------


def readiness(gp) -> tuple[int, dict]:  # type: ignore[no-untyped-def,type-arg]
    response = httpx.get(f"{gp.admin_url}/readyz")
    return response.status_code, response.json()


def test_redis_killed_mid_traffic_falls_back_to_local_limits_and_recovers(start_proxy, upstream, redis_server) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(
        upstream.url,
        "--rate-limit",
        "5/hour",
        "--redis-url",
        redis_server.url,
        env={"GUARDPROXY_RATE_LIMIT__BREAKER_COOLDOWN": "0.5"},
        wait_ready=True,
    )
    assert statuses(f"{gp.url}/echo", 2) == [200, 200]
    assert len(redis_server.client().keys("guardproxy:rl:*")) == 1
    redis_server.kill()
    # Redis' 2 are gone with it: the local limiter starts this instance at a full budget of 5.
    codes = statuses(f"{gp.url}/echo", 8)
    assert codes == [200] * 5 + [429] * 3
    status, body = readiness(gp)
    assert status == 200
    assert body["checks"]["rate_limit_store"]["state"] == "degraded"
    assert body["checks"]["rate_limit_store"]["circuit"] == "open"
    samples = scrape(gp)
    assert value(samples, "guardproxy_ratelimit_fallback_active") == 1
    assert value(samples, "guardproxy_ratelimit_store_errors_total", kind="connection") >= 1
    assert "circuit open" in gp.log_text()

    revived = start_redis(redis_server.directory, port=redis_server.port)
    try:

        def recovered() -> bool:
            httpx.get(f"{gp.url}/echo")  # the probe rides on a request
            return readiness(gp)[1]["checks"]["rate_limit_store"]["state"] == "ok"

        wait_until(recovered, timeout=10, interval=0.2)
        assert value(scrape(gp), "guardproxy_ratelimit_fallback_active") == 0
        assert len(revived.client().keys("guardproxy:rl:*")) == 1
    finally:
        revived.kill()


@pytest.mark.parametrize(
    ("fallback", "expected"),
    [("local", [200, 200, 429, 429]), ("allow", [200, 200, 200, 200]), ("deny", [429, 429, 429, 429])],
)
def test_redis_unreachable_from_the_start_uses_the_chosen_fallback(  # type: ignore[no-untyped-def]
    start_proxy, upstream, fallback: str, expected: list[int]
) -> None:
    gp = start_proxy(
        upstream.url,
        "--rate-limit",
        "2/hour",
        "--redis-url",
        f"redis://:secret-pw@127.0.0.1:{free_port()}/0",
        env={"GUARDPROXY_RATE_LIMIT__FALLBACK": fallback},
        wait_ready=True,
    )
    with httpx.Client() as client:
        responses = [client.get(f"{gp.url}/echo") for _ in range(4)]
    assert [response.status_code for response in responses] == expected
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["type"] == "urn:guardproxy:problem:rate-limited"
    if fallback == "allow":
        assert not any("ratelimit" in response.headers for response in responses)
    status, body = readiness(gp)
    assert status == 200
    assert body["status"] == "ready"
    assert body["checks"]["rate_limit_store"]["fallback"] == fallback
    assert body["checks"]["rate_limit_store"]["state"] == "degraded"
    assert "secret-pw" not in gp.log_text()
    assert "secret-pw" not in httpx.get(f"{gp.admin_url}/readyz").text


def test_a_redis_that_accepts_but_never_answers_costs_at_most_the_time_budget(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    # A black hole: connections are accepted and never answered.
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        gp = start_proxy(
            upstream.url,
            "--rate-limit",
            "100/hour",
            "--redis-url",
            f"redis://127.0.0.1:{listener.getsockname()[1]}/0",
            env={"GUARDPROXY_RATE_LIMIT__TIMEOUT": "0.1"},
        )
        with httpx.Client() as client:
            durations = []
            for _ in range(10):
                started = time.perf_counter()
                assert client.get(f"{gp.url}/echo").status_code == 200
                durations.append(time.perf_counter() - started)
        # Three requests wait out the budget and open the circuit; the rest do not wait at all.
        assert max(durations) < 1.0
        assert sorted(durations)[5] < 0.09
        assert value(scrape(gp), "guardproxy_ratelimit_store_errors_total", kind="timeout") == 3
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_a_flushed_script_cache_is_reloaded_without_a_fallback(start_proxy, upstream, redis_server) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "4/hour", "--redis-url", redis_server.url)
    assert statuses(f"{gp.url}/echo", 2) == [200, 200]
    redis_server.client().script_flush()
    assert statuses(f"{gp.url}/echo", 3) == [200, 200, 429]
    samples = scrape(gp)
    assert value(samples, "guardproxy_ratelimit_fallback_active") == 0
    assert (
        sum(
            value(samples, "guardproxy_ratelimit_store_errors_total", kind=k)
            for k in ("timeout", "connection", "script", "other")
        )
        == 0
    )


def test_keys_expire_when_their_budget_is_whole_again(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    env = shared_store_env()
    gp = start_proxy(upstream.url, "--rate-limit", "10/minute", env=env)
    statuses(f"{gp.url}/echo", 3)
    keys = shared_redis().keys(env["GUARDPROXY_RATE_LIMIT__KEY_PREFIX"] + "*")
    assert len(keys) == 1
    # Three requests of 6 s each: the key lives until the burst is whole again, 18 s.
    assert 17_000 <= shared_redis().pttl(keys[0]) <= 18_000
    # The key names the rule; the client's address appears only hashed.
    assert b"{per-ip:" in keys[0]
    assert b"127.0.0.1" not in keys[0]


# --- Sentinel and Cluster -----------------------------------------------------------------------


def test_a_sentinel_url_finds_the_primary_and_limits_through_it(start_proxy, upstream, redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor primary 127.0.0.1 {redis_server.port} 1\n")
    sentinel = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: port_open(sentinel_port))
        gp = start_proxy(
            upstream.url, "--rate-limit", "2/hour", "--redis-url", f"redis+sentinel://127.0.0.1:{sentinel_port}/primary"
        )
        assert statuses(f"{gp.url}/echo", 3) == [200, 200, 429]
        assert len(redis_server.client().keys("guardproxy:rl:*")) == 1
        assert value(scrape(gp), "guardproxy_ratelimit_fallback_active") == 0
    finally:
        sentinel.kill()
        sentinel.wait()


def test_a_cluster_url_spreads_keys_over_the_nodes_and_limits_exactly(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    nodes = [
        start_redis(
            tmp_path / f"node{index}",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            port=free_cluster_port(),
        )
        for index in range(3)
    ]
    try:
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        # Every node must know every slot's owner before guardproxy asks any of them.
        wait_until(
            lambda: all(b"cluster_state:ok" in node.client().execute_command("CLUSTER", "INFO") for node in nodes),
            timeout=20,
        )
        gp = start_proxy(
            upstream.url,
            "--rate-limit",
            "3/hour",
            "--trusted-proxy",
            "127.0.0.1/32",
            "--redis-url",
            f"redis+cluster://127.0.0.1:{nodes[0].port}",
        )
        clients = [f"198.51.100.{n}" for n in range(12)]
        for client in clients:
            codes = statuses(f"{gp.url}/echo", 4, headers={"X-Forwarded-For": client})
            assert codes == [200, 200, 200, 429], client
        per_node = [len(node.client().keys("guardproxy:rl:*")) for node in nodes]
        assert sum(per_node) == len(clients)
        assert sum(1 for count in per_node if count) >= 2, per_node  # hash tags spread the keys
        assert value(scrape(gp), "guardproxy_ratelimit_fallback_active") == 0
    finally:
        for node in nodes:
            node.kill()


def test_several_workers_without_redis_are_warned_about_per_worker_budgets(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "5/hour", "--workers", "2")
    wait_until(lambda: "rate limits are kept per worker" in gp.log_text())


def test_several_workers_sharing_redis_share_one_budget(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "4/hour", "--workers", "2", env=shared_store_env())
    # New connections each time, so both workers take requests.
    codes = [httpx.get(f"{gp.url}/echo").status_code for _ in range(8)]
    assert codes == [200] * 4 + [429] * 4
    assert "rate limits are kept per worker" not in gp.log_text()


def test_every_rule_has_its_decision_series_before_any_request(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--rate-limit", "5/hour")
    samples = scrape(gp)
    for decision in ("allowed", "limited", "dry_run_limited"):
        key = ("guardproxy_ratelimit_decisions_total", frozenset({("rule", "per-ip"), ("decision", decision)}))
        assert samples[key] == 0


def test_a_redis_refusing_the_password_falls_back_and_says_so(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_redis(tmp_path / "auth", "--requirepass", "right-password")
    try:
        gp = start_proxy(
            upstream.url,
            "--rate-limit",
            "2/hour",
            "--redis-url",
            f"redis://:wrong-password@127.0.0.1:{server.port}/0",
            wait_ready=True,
        )
        assert statuses(f"{gp.url}/echo", 3) == [200, 200, 429]
        status, body = readiness(gp)
        assert status == 200
        assert body["checks"]["rate_limit_store"]["state"] == "degraded"
        samples = scrape(gp)
        kinds = ("timeout", "connection", "script", "other")
        assert sum(value(samples, "guardproxy_ratelimit_store_errors_total", kind=kind) for kind in kinds) >= 1
        assert "wrong-password" not in gp.log_text()
    finally:
        server.kill()
