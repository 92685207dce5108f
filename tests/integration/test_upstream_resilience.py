"""Upstream resilience over real sockets (issue 16): guardproxy through its CLI in front of
scripted upstreams that cut connections, die, restart, never answer, or refuse everything.

Each test prints the figures it measured (run with -s to see them)."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections import Counter

import httpx
import orjson
import pytest

from tests.support.processes import Guardproxy, UpstreamProcess, free_port, start_upstream_app, wait_until
from tests.support.raw import raw_upstream, read_request_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def read_request(conn: socket.socket) -> tuple[str, bytes] | None:
    """One request (method, body) from an upstream-side socket; None when the peer closed."""
    head = read_request_head(conn)
    if not head:
        return None
    header, _, body = head.partition(b"\r\n\r\n")
    method = header.split(b" ", 1)[0].decode()
    length = 0
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return method, body


class CountingHandler:
    """Answers every request 200 on a keep-alive connection, counting requests by method."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, conn: socket.socket, _: int) -> None:
        while (request := read_request(conn)) is not None:
            with self.lock:
                self.seen[request[0]] += 1
            conn.sendall(OK)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def endpoints_env(*urls: str, **extra: str) -> dict[str, str]:
    return {"GUARDPROXY_UPSTREAM__ENDPOINTS": ",".join(urls), **extra}


def problem_of(response: httpx.Response) -> dict:  # type: ignore[type-arg]
    assert response.headers["content-type"] == "application/problem+json"
    return orjson.loads(response.content)  # type: ignore[no-any-return]


def test_cut_connections_lose_no_get_and_never_send_a_post_twice(start_proxy) -> None:  # type: ignore[no-untyped-def]
    # Every other new connection is closed after the request arrived, before any answer; every
    # answer closes its connection, so each request takes a new one.
    seen: list[tuple[int, str, bytes]] = []
    lock = threading.Lock()

    def handler(conn: socket.socket, index: int) -> None:
        request = read_request(conn)
        if request is None:
            return
        with lock:
            seen.append((index, *request))
        if index % 2 == 0:
            conn.sendall(OK_CLOSE)

    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url)
        with httpx.Client(base_url=gp.url, timeout=10) as client:
            gets = [client.get(f"/item/{n}") for n in range(20)]
            posts = [client.post("/orders", content=b"order-%d" % n) for n in range(20)]
    assert [response.status_code for response in gets] == [200] * 20
    post_bodies = [body for _, method, body in seen if method == "POST"]
    assert sorted(post_bodies) == sorted({*post_bodies}), "a POST reached the upstream twice"
    assert len(post_bodies) == 20  # each sent exactly once; the cut ones are 502s, not resent
    failed = [response for response in posts if response.status_code != 200]
    assert all(response.status_code == 502 for response in failed)
    assert all("127.0.0.1" not in response.text for response in failed)
    print(f"\ncut every other connection: GETs 20/20 ok, POSTs {20 - len(failed)}/20 ok, each sent once")


def test_a_put_cut_after_its_body_went_out_is_sent_again_whole(start_proxy) -> None:  # type: ignore[no-untyped-def]
    bodies: list[tuple[int, bytes]] = []

    def handler(conn: socket.socket, index: int) -> None:
        request = read_request(conn)
        if request is None:
            return
        bodies.append((index, request[1]))
        if index % 2 == 1:
            conn.sendall(OK_CLOSE)

    payload = bytes(range(256)) * 40  # 10 KiB: within the replay buffer
    with raw_upstream(handler) as upstream:
        gp = start_proxy(upstream.url, env={"GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL": "3600"})
        responses = [httpx.put(f"{gp.url}/doc/{n}", content=payload, timeout=10) for n in range(5)]
    assert [response.status_code for response in responses] == [200] * 5
    assert all(body == payload for _, body in bodies)  # every attempt carried the whole body
    cut = [index for index, _ in bodies if index % 2 == 0]
    assert len(cut) >= 4  # (the readiness probe's connection may take one of the cut turns)
    assert len(bodies) == 5 + len(cut)


def test_a_large_put_cut_after_it_went_out_is_not_resent(start_proxy) -> None:  # type: ignore[no-untyped-def]
    seen: list[int] = []

    def handler(conn: socket.socket, _: int) -> None:
        request = read_request(conn)
        if request is not None:
            seen.append(len(request[1]))  # and close without an answer

    with raw_upstream(handler) as upstream:
        env = {"GUARDPROXY_UPSTREAM__RETRIES__REPLAY_BUFFER_BYTES": "1024"}
        gp = start_proxy(upstream.url, env=env)
        response = httpx.put(f"{gp.url}/doc", content=b"x" * 4096, timeout=10)
    assert response.status_code == 502
    assert [size for size in seen if size] == [4096]  # past the replay buffer: sent once


def test_a_post_refused_before_anything_was_sent_is_retried_elsewhere(start_proxy) -> None:  # type: ignore[no-untyped-def]
    live = CountingHandler()
    with raw_upstream(live) as upstream:
        dead = f"http://127.0.0.1:{free_port()}"
        gp = start_proxy(upstream.url, env=endpoints_env(upstream.url, dead))
        responses = [httpx.post(f"{gp.url}/orders", content=b"x", timeout=10) for _ in range(20)]
    assert [response.status_code for response in responses] == [200] * 20
    assert live.seen == Counter({"POST": 20})


def test_two_endpoints_with_one_dead_send_everything_to_the_live_one(start_proxy) -> None:  # type: ignore[no-untyped-def]
    live = CountingHandler()
    with raw_upstream(live) as upstream:
        dead = f"http://127.0.0.1:{free_port()}"
        gp = start_proxy(upstream.url, env=endpoints_env(dead, upstream.url))
        with httpx.Client(base_url=gp.url, timeout=10) as client:
            statuses = Counter(client.get(f"/n/{n}").status_code for n in range(100))
        ready = httpx.get(f"{gp.admin_url}/readyz", timeout=5)
    assert statuses == Counter({200: 100})
    assert live.total == 100

    def logged() -> list[dict]:  # type: ignore[type-arg]
        lines = [orjson.loads(line) for line in gp.log_text().splitlines() if line.startswith('{"timestamp"')]
        return [line for line in lines if line.get("event") == "request"]

    wait_until(lambda: len(logged()) >= 100)  # the access log is written in the background
    requests = logged()
    assert {line["endpoint"] for line in requests} == {upstream.url.removeprefix("http://")}
    assert {line["attempts"] for line in requests} <= {1, 2}  # a pick of the dead one: one retry
    assert ready.status_code == 200
    endpoints = ready.json()["checks"]["upstream"]["endpoints"]
    states = {endpoint["name"]: endpoint["ok"] for endpoint in endpoints}
    assert states == {dead.removeprefix("http://"): False, upstream.url.removeprefix("http://"): True}


def test_readiness_is_503_only_when_no_endpoint_is_healthy(start_proxy) -> None:  # type: ignore[no-untyped-def]
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    gp = start_proxy(dead[0], env=endpoints_env(*dead, GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL="0.2"))
    ready = httpx.get(f"{gp.admin_url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert [endpoint["ok"] for endpoint in ready.json()["checks"]["upstream"]["endpoints"]] == [False, False]


def _black_hole() -> socket.socket:
    """A listening socket that never accepts: connections queue, nothing answers."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    return hole


def test_a_black_holed_endpoint_fails_fast_once_its_breaker_opens(start_proxy) -> None:  # type: ignore[no-untyped-def]
    hole = _black_hole()
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    env = {
        "GUARDPROXY_UPSTREAM__CONNECT_TIMEOUT": "0.3",
        "GUARDPROXY_UPSTREAM__READ_TIMEOUT": "0.3",
        "GUARDPROXY_UPSTREAM__RETRIES__ATTEMPTS": "0",
        "GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__CONSECUTIVE_FAILURES": "3",
        "GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__OPEN_FOR": "30",
        # The hole accepts TCP connects into its backlog, so a connect-only check may pass and
        # (rightly) let a probe through early; this test is about the breaker alone.
        "GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL": "3600",
    }
    try:
        gp = start_proxy(url, env=env)
        timings: list[tuple[int, float]] = []
        with httpx.Client(base_url=gp.url, timeout=10) as client:
            for _ in range(13):
                started = time.perf_counter()
                response = client.get("/")
                timings.append((response.status_code, time.perf_counter() - started))
            last = response
    finally:
        hole.close()
    slow, fast = timings[:3], timings[3:]
    assert all(status == 504 for status, _ in slow)
    assert all(status == 503 for status, _ in fast)
    assert problem_of(last)["type"] == "urn:guardproxy:problem:upstream-circuit-open"
    assert 1 <= int(last.headers["retry-after"]) <= 30
    # Answered at once: none waited out the 0.3 s timeouts (the bound on the slowest leaves room
    # for a pause on a loaded CI machine; the median says what a client gets).
    assert statistics.median(seconds for _, seconds in fast) < 0.1
    assert max(seconds for _, seconds in fast) < 0.3
    print(
        f"\nblack hole: before the breaker opened {statistics.median(s for _, s in slow) * 1000:.0f} ms, "
        f"after {statistics.median(s for _, s in fast) * 1000:.1f} ms (median of {len(fast)})"
    )


def test_a_retry_budget_caps_attempts_in_a_full_outage(start_proxy) -> None:  # type: ignore[no-untyped-def]
    # Every connection is closed at once (so each attempt is seen), the breaker is off: only
    # the budget stands between a full outage and three attempts per request.
    def handler(conn: socket.socket, _: int) -> None:
        return None

    with raw_upstream(handler) as upstream:
        env = {
            "GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__ENABLED": "false",
            "GUARDPROXY_UPSTREAM__RETRIES__BACKOFF_BASE": "0",
            "GUARDPROXY_UPSTREAM__RETRIES__BACKOFF_CAP": "0",
            "GUARDPROXY_UPSTREAM__RETRIES__BUDGET_MIN_PER_SECOND": "1",
        }
        gp = start_proxy(upstream.url, env=env)
        with httpx.Client(base_url=gp.url, timeout=10) as client:
            statuses = Counter(client.get("/").status_code for _ in range(200))
        attempts = upstream.connections
    assert statuses == Counter({502: 200})
    # 200 first attempts, retries at most 20 % of them plus the floor (1/s over 10 s).
    assert 200 <= attempts <= 200 + 0.2 * 200 + 10 + 1
    print(f"\nfull outage: {attempts / 200:.2f} attempts per client request (budget 20 % + 10)")


def _load(url: str, stop: threading.Event, outcomes: Counter[str], lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                status = str(client.get("/echo").status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with lock:
                outcomes[status] += 1


def _endpoint_states(gp: Guardproxy) -> set[str]:
    ready = httpx.get(f"{gp.admin_url}/readyz", timeout=5).json()
    return {endpoint["state"] for endpoint in ready["checks"]["upstream"]["endpoints"]}


def _restart(app: UpstreamProcess, *, graceful: bool = False) -> UpstreamProcess:
    """Kill the app (or, `graceful`, stop it with SIGTERM) and start it again on the same port
    half a second later."""
    if graceful:
        app.drain()
    else:
        app.stop()
    time.sleep(0.5)
    return start_upstream_app(app.port)


@pytest.mark.slow
def test_a_rolling_restart_under_load_costs_no_get(start_proxy) -> None:  # type: ignore[no-untyped-def]
    first, second = start_upstream_app(), start_upstream_app()
    apps = [first, second]
    try:
        env = endpoints_env(
            first.url,
            second.url,
            GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__OPEN_FOR="1",
            GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL="0.2",
        )
        gp = start_proxy(first.url, env=env)
        stop, lock, outcomes = threading.Event(), threading.Lock(), Counter[str]()
        workers = [threading.Thread(target=_load, args=(gp.url, stop, outcomes, lock)) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            for index, app in enumerate(list(apps)):
                time.sleep(1.0)
                # SIGTERM, as Kubernetes stops a pod: a replica killed outright cuts the response
                # it is writing, which no proxy can mend once its head has gone to the client.
                apps[index] = _restart(app, graceful=True)
                # As a rollout waits for the new replica before it stops the next one: here until
                # guardproxy sends it traffic again (breaker closed by probes, health checks passed).
                wait_until(lambda: _endpoint_states(gp) == {"healthy"}, timeout=15)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=20)
    finally:
        for app in apps:
            app.stop()
    total = sum(outcomes.values())
    errors = total - outcomes["200"]
    print(f"\nrolling restart of 2 endpoints under load: {total} GETs, {errors} errors {dict(outcomes)}")
    assert total > 100
    assert errors == 0


@pytest.mark.slow
def test_a_single_upstream_killed_and_restarted_under_load(start_proxy) -> None:  # type: ignore[no-untyped-def]
    app = start_upstream_app()
    try:
        env = {"GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__OPEN_FOR": "0.5"}
        gp = start_proxy(app.url, env=env)
        stop, lock, outcomes = threading.Event(), threading.Lock(), Counter[str]()
        workers = [threading.Thread(target=_load, args=(gp.url, stop, outcomes, lock)) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(1.0)
            down = time.monotonic()
            app = _restart(app)
            outage = time.monotonic() - down
            time.sleep(2.0)
            with lock:
                outcomes_after_restart = Counter(outcomes)
            wait_until(lambda: outcomes["200"] > outcomes_after_restart["200"] + 50, timeout=10)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=20)
    finally:
        app.stop()
    total = sum(outcomes.values())
    errors = total - outcomes["200"]
    print(f"\none upstream down {outage:.2f} s under load: {total} GETs, {errors} errors {dict(outcomes)}")
    # Nothing can serve while the only instance is down: clients get 502/503 problems (or, for
    # a response the dying upstream had started, a cut connection), and service comes back by
    # itself, without a restart of guardproxy.
    assert set(outcomes) <= {"200", "502", "503", "RemoteProtocolError"}
    assert outcomes["RemoteProtocolError"] <= 8  # at most the requests in flight at the kill


def _open_the_circuit_then_restart(start_proxy, check_interval: str) -> tuple[Guardproxy, UpstreamProcess]:  # type: ignore[no-untyped-def]
    """One upstream behind a breaker that stays open 30 s: stopped until its circuit opens, then
    started again on the same port. Returns once it listens again."""
    app = start_upstream_app()
    env = {
        "GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__CONSECUTIVE_FAILURES": "2",
        "GUARDPROXY_UPSTREAM__CIRCUIT_BREAKER__OPEN_FOR": "30",
        "GUARDPROXY_UPSTREAM__HEALTH_CHECK__INTERVAL": check_interval,
    }
    try:
        gp = start_proxy(app.url, env=env)
        assert httpx.get(f"{gp.url}/echo", timeout=10).status_code == 200
        app.stop()

        def circuit_open() -> bool:
            response = httpx.get(f"{gp.url}/echo", timeout=10)
            return response.status_code == 503 and "upstream-circuit-open" in response.text

        wait_until(circuit_open, timeout=15)
    except BaseException:
        app.stop()
        raise
    return gp, start_upstream_app(app.port)


def test_a_passing_health_check_ends_an_open_circuit_long_before_open_for(start_proxy) -> None:  # type: ignore[no-untyped-def]
    gp, app = _open_the_circuit_then_restart(start_proxy, check_interval="0.2")
    try:
        back = time.monotonic()
        wait_until(lambda: httpx.get(f"{gp.url}/echo", timeout=10).status_code == 200, timeout=10)
        recovered = time.monotonic() - back
    finally:
        app.stop()
    # open_for is 30 s; a check every 0.2 s lets the next request probe within a fraction of a
    # second. 10 s leaves room for a loaded machine and is still a third of open_for.
    assert recovered < 10

    def moves() -> list[tuple[str, str]]:
        lines = [orjson.loads(line) for line in gp.log_text().splitlines() if line.startswith("{")]
        changed = [line for line in lines if line.get("event") == "upstream endpoint circuit changed"]
        return [(line["previous"], line["state"]) for line in changed]

    wait_until(lambda: len(moves()) >= 2)
    assert moves() == [("closed", "open"), ("open", "half_open")]  # (closing takes 3 probes)
    print(f"\nupstream back: requests served again after {recovered:.2f} s (open_for 30 s)")


def test_without_a_check_in_between_the_circuit_stays_open(start_proxy) -> None:  # type: ignore[no-untyped-def]
    # The control for the test above: the same outage with no health check due for an hour.
    gp, app = _open_the_circuit_then_restart(start_proxy, check_interval="3600")
    try:
        time.sleep(2.0)  # ten check intervals of the test above
        response = httpx.get(f"{gp.url}/echo", timeout=10)
    finally:
        app.stop()
    assert response.status_code == 503
    assert problem_of(response)["type"] == "urn:guardproxy:problem:upstream-circuit-open"
    assert 1 <= int(response.headers["retry-after"]) <= 30
