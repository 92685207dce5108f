"""Logs as an operator reads them: one JSON line per request, matched by request ID, an audit
line per security refusal, and no secret anywhere in the output; and the log's guarantees when
stdout is a pipe, as under Docker: a consumer that stops reading never stalls requests, workers
sharing the pipe never interleave lines, and nothing buffered is lost at shutdown."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest

from guardproxy.observability.metrics import FLUSH_INTERVAL as METRICS_FLUSH_INTERVAL
from tests.integration.test_metrics import scrape, value
from tests.support.processes import Guardproxy, free_port, wait_until

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
    wait_until(lambda: "page=2" in gp.log_text(), timeout=3)
    assert gp.stop() == 0  # everything buffered is written
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
    assert gp.stop() == 0  # nothing can still be buffered
    assert log_records(gp)
    assert not [r for r in log_records(gp) if r.get("event") == "request"]


# One format at start and stop: guardproxy's own lines and uvicorn's (through the standard
# library) are rendered alike, and uvicorn's process lines come once per process, not once per
# listener (a worker runs a uvicorn.Server for the proxy and one for the admin listener).

PROCESS_LINES = ("Started server process", "Shutting down", "Finished server process")


def _raw_lines(gp: Guardproxy) -> list[bytes]:
    return [line for line in gp.log_path.read_bytes().splitlines() if line.strip()]


def _assert_one_shape(lines: list[bytes]) -> list[dict]:  # type: ignore[type-arg]
    """Every line compact JSON, its source first in `component`, then its fields, then event, level
    and timestamp (and a traceback in `exception` after them, as structlog puts it in either case)."""
    records = []
    for line in lines:
        record = orjson.loads(line)
        assert orjson.dumps(record) == line, f"not compact JSON: {line!r}"
        keys = [key for key in record if key != "exception"]
        assert keys[0] == "component", line
        assert keys[-3:] == ["event", "level", "timestamp"], line
        assert "logger" not in record, line
        records.append(record)
    return records


def _events_starting(records: list[dict], prefix: str) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in records if r["event"].startswith(prefix)]


def test_start_and_stop_lines_share_one_compact_shape(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SERVER__DRAIN_DELAY": "0.2"})
    assert gp.stop() == 0
    records = _assert_one_shape(_raw_lines(gp))
    components = {r["component"] for r in records}
    assert {"guardproxy.server", "uvicorn.error"} <= components, components
    events = [r["event"] for r in records]
    for prefix in PROCESS_LINES:
        assert len(_events_starting(records, prefix)) == 1, (prefix, events)
    (started,) = _events_starting(records, "Started server process")
    assert started["event"] == f"Started server process [{gp.process.pid}]"
    order = [next(i for i, event in enumerate(events) if event.startswith(p)) for p in PROCESS_LINES]
    assert order == sorted(order), events
    assert events.index("draining") < order[1], "uvicorn shuts down after guardproxy starts draining"


def test_each_worker_logs_its_start_once(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", "2")
    wait_until(lambda: len(_events_starting(_assert_one_shape(_raw_lines(gp)), "Started server process")) >= 2)
    assert gp.stop() == 0
    records = _assert_one_shape(_raw_lines(gp))
    started = {r["event"] for r in _events_starting(records, "Started server process")}
    finished = {r["event"].replace("Finished", "Started") for r in _events_starting(records, "Finished server process")}
    assert len(started) == 2, started  # two workers, two process IDs, one line each
    assert len(_events_starting(records, "Started server process")) == 2
    assert finished == started
    assert len(_events_starting(records, "Shutting down")) == 2


def _log_from_python(code: str, *, fmt: str = "json") -> list[bytes]:
    """Lines printed by a process that configures guardproxy's logging and then runs `code`."""
    script = (
        "import logging\n"
        "from guardproxy.config import LoggingSettings\n"
        "from guardproxy.observability.logging import configure_logging\n"
        f"configure_logging(LoggingSettings(format={fmt!r}))\n" + code
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_uvicorn_lines_are_not_dropped_beyond_the_repeats() -> None:
    """Two listeners start, one fails before it finishes: the process' Finished line must wait for
    both, while uvicorn's other lines (per listener, and errors) all come through."""
    lines = _log_from_python(
        "log = logging.getLogger('uvicorn.error')\n"
        "for _ in range(2): log.info('Started server process [%d]', 7)\n"
        "log.info('Shutting down'); log.info('Waiting for connections to close. (CTRL+C to force quit)')\n"
        "log.info('Shutting down'); log.info('Waiting for connections to close. (CTRL+C to force quit)')\n"
        "log.error('Cancel %s running task(s), timeout graceful shutdown exceeded', 3)\n"
        "log.info('Finished server process [%d]', 7)\n"
    )
    events = [record["event"] for record in _assert_one_shape(lines)]
    assert events == [
        "Started server process [7]",
        "Shutting down",
        "Waiting for connections to close. (CTRL+C to force quit)",
        "Waiting for connections to close. (CTRL+C to force quit)",
        "Cancel 3 running task(s), timeout graceful shutdown exceeded",
    ]


def test_only_uvicorns_process_lines_are_collapsed() -> None:
    """Another library saying the same words is not uvicorn: every one of its lines is kept."""
    lines = _log_from_python(
        "for _ in range(3): logging.getLogger('somelib').warning('Started server process [%d]', 1)\n"
        "for _ in range(2): logging.getLogger('uvicorn.access').info('Shutting down')\n"
    )
    records = _assert_one_shape(lines)
    assert [r["component"] for r in records] == ["somelib"] * 3 + ["uvicorn.access"] * 2
    assert [r["level"] for r in records] == ["warning"] * 3 + ["info"] * 2


def test_foreign_exceptions_and_odd_messages_stay_one_json_line() -> None:
    lines = _log_from_python(
        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    logging.getLogger('uvicorn.error').exception('boom')\n"
        "logging.getLogger('x').info(b'raw \\xff bytes')\n"
        "logging.getLogger('x').info('quote \" newline \\n tab \\t and \\u2603 and \\ud800')\n"
        "logging.getLogger('x').info('%s of %d', 'wrong')\n"  # bad arguments: logging reports, no crash
        "logging.getLogger('x').info('after the bad one')\n"
    )
    records = _assert_one_shape(lines)
    assert [r["component"] for r in records] == ["uvicorn.error", "x", "x", "x"]
    assert "ZeroDivisionError" in records[0]["exception"]
    assert records[1]["event"] == "b'raw \\xff bytes'"
    # The lone surrogate cannot be UTF-8: replaced, and the rest of the line kept.
    assert records[2]["event"].startswith('quote " newline \n tab \t and \u2603 and \ufffd')
    assert records[-1]["event"] == "after the bad one"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_nothing_buffered_is_lost_at_shutdown(start_proxy, upstream, workers: str) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", workers)
    with httpx.Client() as client:
        ids = [client.get(f"{gp.url}/echo").headers["x-request-id"] for _ in range(50)]
    # At once, well within the sink's flush interval: the drain writes what waits.
    assert gp.stop() == 0
    logged = [r["request_id"] for r in log_records(gp) if r.get("event") == "request"]
    assert sorted(logged) == sorted(ids)


@contextmanager
def guardproxy_on_a_pipe(
    upstream_url: str, *args: str, pipe_size: int | None = None
) -> Iterator[tuple[Guardproxy, int]]:
    """guardproxy with its stdout (and stderr) a pipe that the test reads, or does not."""
    read_end, write_end = os.pipe()
    if pipe_size is not None:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, pipe_size)
    port, admin_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "guardproxy", "run", "--upstream", upstream_url, "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin_port}", *args,
    ]  # fmt: skip
    env = {**os.environ, "GUARDPROXY_SERVER__DRAIN_DELAY": "0"}
    process = subprocess.Popen(command, stdout=write_end, stderr=write_end, env=env, start_new_session=True)
    os.close(write_end)
    gp = Guardproxy(port, admin_port, process, Path(os.devnull), command)
    try:
        wait_until(lambda: _healthy(gp), timeout=15)
        yield gp, read_end
    finally:
        gp.stop(signal.SIGKILL if process.poll() is None else signal.SIGTERM, timeout=10)
        os.close(read_end)


def _healthy(gp: Guardproxy) -> bool:
    try:
        return httpx.get(f"{gp.admin_url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def wrk(url: str, seconds: int, user_agent: str) -> int:
    """Requests completed by wrk in `seconds` (errors and timeouts are not completions)."""
    output = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", "--timeout", "2s", "-H", f"User-Agent: {user_agent}", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "Non-2xx" not in output, output
    return int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]


def test_a_consumer_that_stops_reading_costs_log_lines_not_requests(upstream) -> None:  # type: ignore[no-untyped-def]
    # A 4 KB User-Agent makes each access line ~4.5 KB: a blocking log would stall the proxy
    # after the ~14 lines a pipe holds; this one buffers ~900 and then drops and counts.
    with guardproxy_on_a_pipe(upstream.url) as (gp, read_end):
        completed = wrk(f"{gp.url}/echo", 3, "stalled/" + "u" * 4000)
        assert completed > 1000
        assert httpx.get(f"{gp.admin_url}/healthz", timeout=2).status_code == 200
        dropped = value(scrape(gp), "guardproxy_log_lines_dropped_total")
        assert dropped > 0
        # The consumer reads again: what the pipe held is whole lines, and logging resumes.
        reader = PipeReader(read_end)
        reader.start()
        request_id = httpx.get(f"{gp.url}/echo", headers={"User-Agent": "resumed"}).headers["x-request-id"]
        wait_until(lambda: request_id.encode() in reader.text(), timeout=5)
        lines = reader.lines()
        assert all(orjson.loads(line) for line in lines)
        assert sum(1 for line in lines if b"stalled/" in line) + dropped >= completed


class PipeReader(threading.Thread):
    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.chunks: list[bytes] = []

    def run(self) -> None:
        while chunk := os.read(self.fd, 4096):
            self.chunks.append(chunk)

    def text(self) -> bytes:
        return b"".join(self.chunks)

    def lines(self) -> list[bytes]:
        return [line for line in self.text().split(b"\n") if line.strip()]


def test_workers_sharing_a_pipe_never_interleave_lines(upstream) -> None:  # type: ignore[no-untyped-def]
    # The smallest pipe there is, so that the pipe is full most of the time and both workers
    # (and the supervisor) compete for the room it makes; ~1.5 KB lines, two to a block.
    with guardproxy_on_a_pipe(upstream.url, "--workers", "2", pipe_size=4096) as (gp, read_end):
        reader = PipeReader(read_end)
        reader.start()
        completed = wrk(f"{gp.url}/echo", 2, "shared/" + "w" * 1000)
        # This reader competes for two cores with two busy workers: when it falls further behind
        # than the sink's bound (the compiled build writes lines fast enough), lines are dropped
        # and counted, never cut. Each worker moves its count into the metrics every second.
        time.sleep(METRICS_FLUSH_INTERVAL + 0.5)
        dropped = value(scrape(gp), "guardproxy_log_lines_dropped_total")
        assert gp.stop() == 0
        reader.join(10)
    lines = reader.lines()
    records = [orjson.loads(line) for line in lines]  # raises on any interleaved line
    requests = [r for r in records if r.get("event") == "request" and r["user_agent"].startswith("shared/")]
    assert len(requests) + dropped >= completed > 500
