"""guardproxy as an operator meets it: the CLI, the admin listener, signals and workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from tests.support.processes import Guardproxy, free_port, wait_until


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_admin_endpoints(proxy: Guardproxy) -> None:
    assert httpx.get(f"{proxy.admin_url}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{proxy.admin_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metrics = httpx.get(f"{proxy.admin_url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "process_resident_memory_bytes" in metrics.text


def test_admin_paths_on_the_proxy_port_go_upstream(proxy: Guardproxy) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        response = httpx.get(f"{proxy.url}{path}")
        assert response.status_code == 404, path  # the upstream app's own answer
        assert response.json() == {"error": "not found"}


def test_request_counter_counts_by_route_and_outcome(proxy: Guardproxy) -> None:
    def count(line_prefix: str) -> float:
        text = httpx.get(f"{proxy.admin_url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))

    ok = 'guardproxy_requests_total{method="GET",outcome="ok",route="default",status_class="2xx"}'
    # (prometheus-client renders labels in alphabetical order)
    before = count(ok)
    for _ in range(7):
        httpx.get(f"{proxy.url}/echo")
    httpx.request("PROPFIND", f"{proxy.url}/echo")  # a method outside the fixed label set
    assert count(ok) == before + 7
    assert count('guardproxy_requests_total{method="other"') >= 1


def test_many_distinct_paths_add_no_series(proxy: Guardproxy) -> None:
    def series() -> int:
        text = httpx.get(f"{proxy.admin_url}/metrics").text
        return sum(1 for line in text.splitlines() if line.startswith("guardproxy_requests_total{"))

    httpx.get(f"{proxy.url}/echo/warm-up")
    before = series()
    for index in range(200):
        httpx.get(f"{proxy.url}/echo/{index}?n={index}")
    assert series() == before


def test_bad_configuration_exits_2_with_one_clear_line() -> None:
    result = run_cli("run", "--upstream", "not a url")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "guardproxy: configuration error: upstream.url: must be an http:// or https:// URL, got 'not a url'"
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_every_problem_is_listed_by_check_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "bad.yaml"
    config.write_text("upstream:\n  url: ftp://x\n  read_timeout: -1\nserver:\n  workers: 0\n  colour: blue\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    for setting in ("upstream.url", "upstream.read_timeout", "server.workers", "server.colour"):
        assert any(setting in line for line in lines), setting


def test_check_config_reads_file_and_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text("upstream:\n  url: http://file:1\n  read_timeout: 7\n")
    result = run_cli("check-config", env={"GUARDPROXY_CONFIG": str(config), "GUARDPROXY_UPSTREAM__URL": "http://env:2"})
    assert result.returncode == 0, result.stderr
    assert "url: http://env:2" in result.stdout
    assert "read_timeout: 7.0" in result.stdout


def test_port_in_use_names_the_setting(upstream) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        admin = f"127.0.0.1:{free_port()}"
        result = run_cli("run", "--upstream", upstream.url, "--listen", f"127.0.0.1:{port}", "--admin-listen", admin)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"guardproxy: server.listen: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_exit_cleanly(start_proxy, upstream, sig: int) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    assert httpx.get(f"{gp.url}/echo").status_code == 200
    assert gp.stop(sig) == 0
    assert "Traceback" not in gp.log_text()


def test_request_in_flight_finishes_on_sigterm(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url)
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("slow", httpx.get(f"{gp.url}/slow?delay=1.5", timeout=10))
    )
    thread.start()
    time.sleep(0.5)
    gp.process.send_signal(signal.SIGTERM)
    thread.join(10)
    assert result["slow"].status_code == 200
    assert result["slow"].json() == {"slow": True}
    assert gp.process.wait(10) == 0


def test_logs_are_json_lines(proxy: Guardproxy) -> None:
    import orjson  # noqa: PLC0415

    lines = [line for line in proxy.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        record = orjson.loads(line)
        assert {"event", "level", "timestamp"} <= record.keys()


def test_workers_share_the_ports_and_are_restarted(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, "--workers", "2")
    parent = psutil.Process(gp.process.pid)

    def workers() -> list[psutil.Process]:
        # (multiprocessing's spawn context also starts a resource tracker child)
        return [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline()) and c.is_running()]

    wait_until(lambda: len(workers()) == 2, timeout=15)
    with httpx.Client() as client:
        for _ in range(20):
            assert client.get(f"{gp.url}/echo", headers={"Connection": "close"}).status_code == 200
    victim = workers()[0]
    victim.kill()
    victim.wait(5)
    wait_until(lambda: len(workers()) == 2 and victim not in workers(), timeout=15)
    wait_until(lambda: httpx.get(f"{gp.url}/echo").status_code == 200, timeout=15)
    children = workers()
    assert gp.stop() == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
