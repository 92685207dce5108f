"""Logs as an operator reads them: one JSON line per request, matched by request ID, an audit
line per security refusal, and no secret anywhere in the output."""

from __future__ import annotations

import threading
import time

import httpx
import orjson

from tests.support.processes import Guardproxy, wait_until

SECRETS = ["Bearer-s3cr3t-token", "session=c00kie-v4lue", "hunter2-password", "qs-token-value", "k3y-in-query"]


def log_records(gp: Guardproxy) -> list[dict]:  # type: ignore[type-arg]
    return [orjson.loads(line) for line in gp.log_text().splitlines() if line.strip()]


def access_lines(gp: Guardproxy, request_id: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in log_records(gp) if r.get("event") == "request" and r.get("request_id") == request_id]


def test_one_access_line_per_request_with_the_fields_that_matter(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    response = httpx.post(f"{gp.url}/echo/items?x=1", content=b"12345", headers={"User-Agent": "probe/1.0"})
    request_id = response.headers["x-request-id"]
    wait_until(lambda: access_lines(gp, request_id), timeout=3)
    (line,) = access_lines(gp, request_id)
    assert line["method"] == "POST"
    assert line["route"] == "default"
    assert line["path"] == "/echo/items"
    assert line["query"] == "x=1"
    assert line["status"] == 200
    assert line["outcome"] == "ok"
    assert line["request_bytes"] == 5
    assert line["response_bytes"] == len(response.content)
    assert line["duration_ms"] >= line["upstream_ms"] > 0
    assert line["user_agent"] == "probe/1.0"
    assert line["client"] == "127.0.0.1"
    assert len(line["trace_id"]) == 32
    assert line["timestamp"].endswith("Z")


def test_every_line_is_json(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    httpx.get(f"{gp.url}/echo")
    httpx.get(f"{gp.url}/status/500")
    time.sleep(0.3)
    records = log_records(gp)  # raises if any line is not JSON
    assert {"event", "level", "timestamp"} <= set().union(*(r.keys() for r in records))


def test_concurrent_requests_each_get_exactly_one_line(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    ids: list[str] = []

    def call() -> None:
        ids.append(httpx.get(f"{gp.url}/slow?delay=0.2").headers["x-request-id"])

    threads = [threading.Thread(target=call) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: sum(1 for r in log_records(gp) if r.get("event") == "request") >= 40, timeout=5)
    logged = [r["request_id"] for r in log_records(gp) if r.get("event") == "request"]
    assert sorted(logged) == sorted(ids)


def test_secrets_never_reach_the_log(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--log-level", "debug")
    headers = {
        "Authorization": f"Bearer {SECRETS[0]}",
        "Cookie": SECRETS[1],
        "Proxy-Authorization": f"Basic {SECRETS[2]}",
        "X-Api-Key": SECRETS[4],
    }
    query = f"token={SECRETS[3]}&password={SECRETS[2]}&api_key={SECRETS[4]}&page=2"
    httpx.get(f"{gp.url}/echo?{query}", headers=headers)
    httpx.get(f"{gp.url}/cookies?access_token={SECRETS[3]}", headers=headers)
    httpx.post(f"{gp.url}/echo?secret={SECRETS[3]}", content=b"x" * (2 * 1024 * 1024), headers=headers)  # refused
    httpx.get(f"{gp.url}/..%2f?token={SECRETS[3]}", headers=headers)  # refused path
    time.sleep(0.5)
    text = gp.log_text()
    assert "page=2" in text  # the query is logged...
    for secret in SECRETS:
        assert secret not in text, secret  # ...but never a secret


def test_security_refusals_are_audited(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--allowed-host", "api.example.com")
    refusals = {
        "refused_host": httpx.get(f"{gp.url}/echo", headers={"Host": "evil.test"}),
        "bad_path": httpx.get(f"{gp.url}/a/%2e%2e/b", headers={"Host": "api.example.com"}),
        "too_large": httpx.post(f"{gp.url}/echo", content=b"x" * (2 << 20), headers={"Host": "api.example.com"}),
    }
    wait_until(lambda: sum(1 for r in log_records(gp) if r.get("event") == "security_event") >= 3, timeout=3)
    events = {r["request_id"]: r for r in log_records(gp) if r.get("event") == "security_event"}
    for kind, response in refusals.items():
        event = events[response.headers["x-request-id"]]
        assert event["kind"] == kind
        assert event["level"] == "warning"
        assert event["status"] == response.status_code


def test_access_log_can_be_turned_off(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_LOGGING__ACCESS_LOG": "false"})
    httpx.get(f"{gp.url}/echo")
    time.sleep(0.3)
    assert not [r for r in log_records(gp) if r.get("event") == "request"]
