"""`guardproxy audit` over real sockets: the weak upstream fails each probe, guardproxy in front
of it (defaults, or the flags that fix what defaults cannot) passes it, and targets that cannot
be audited end with a clear error, exit code 2, within bounded time."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from guardproxy.audit.checks import CHECKS, Status
from guardproxy.audit.runner import AuditError, AuditOptions, run_audit
from guardproxy.audit.session import Bounds
from tests.support.audit_targets import black_hole, garbage_server, stalls_after_one_answer, start_weak_upstream
from tests.support.processes import Guardproxy, UpstreamProcess, free_port, start_guardproxy
from tests.support.tls import write_certificate

# guardproxy's defaults fix these.
FIXED_BY_DEFAULTS = {
    "request_id.present",
    "request_id.echoed",
    "errors.malformed.format",
    "errors.request_id",
    "headers.security",
    "https.hsts",
    "headers.banners",
    "client_ip.spoofed",
    "body_limit",
    "limits.head",
    "slow_head",
    "compression",
    "paths.traversal",
    "methods.trace",
}
# Warned about (not failed) at the weak upstream, fixed by the defaults.
WARNED_AND_FIXED_BY_DEFAULTS = {"cache_control"}
# These need a setting: the fix column names it, and the fixed proxy below sets it.
FIXED_BY_SETTINGS = {
    "cors.foreign_origin",
    "cors.null_origin",
    "cors.preflight",
    "rate_limit",
    "hosts.foreign",
}
# guardproxy passes the upstream's own error bodies through: still failing.
NOT_FIXED = {"errors.not_found.format", "errors.not_found.leaks", "errors.server_error.leaks"}
FIXING_FLAGS = (
    *("--cors-origin", "https://app.example.test"),
    *("--allowed-host", "127.0.0.1"),
    *("--rate-limit", "100/minute"),
)
FIXING_ENV: dict[str, str] = {}


def audit_cli(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "guardproxy", "audit", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {row["check"]: row["status"] for row in report["rows"]}


@pytest.fixture(scope="module")
def weak() -> Iterator[UpstreamProcess]:
    upstream = start_weak_upstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def proxies(weak: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Guardproxy]]:
    logs = tmp_path_factory.mktemp("audit-logs")
    started = {
        "defaults": start_guardproxy(weak.url, log_dir=logs),
        "fixed": start_guardproxy(weak.url, *FIXING_FLAGS, log_dir=logs, env=FIXING_ENV),
    }
    yield started
    for proxy in started.values():
        assert proxy.stop() == 0, proxy.log_text()


@pytest.fixture(scope="module")
def reports(weak: UpstreamProcess, proxies: dict[str, Guardproxy]) -> dict[str, Any]:
    """One real audit (the CLI, JSON) of each target, run side by side to keep the wall time low."""
    targets = {"weak": weak.url + "/", "defaults": proxies["defaults"].url + "/", "fixed": proxies["fixed"].url + "/"}
    with ThreadPoolExecutor(len(targets)) as pool:
        outcomes = pool.map(lambda url: audit_cli(url, "--format", "json"), targets.values())
        runs = dict(zip(targets, outcomes, strict=True))
    results: dict[str, Any] = {}
    for name, (code, out, err, seconds) in runs.items():
        assert code == 0, err
        results[name] = json.loads(out)
        results[name]["wall_seconds"] = seconds
    return results


@pytest.mark.parametrize("check", sorted(FIXED_BY_DEFAULTS))
def test_weak_upstream_fails_and_guardproxy_defaults_fix_it(reports: dict[str, Any], check: str) -> None:
    assert statuses(reports["weak"])[check] == "fail", reports["weak"]
    assert statuses(reports["defaults"])[check] == "pass", reports["defaults"]


@pytest.mark.parametrize("check", sorted(WARNED_AND_FIXED_BY_DEFAULTS))
def test_weak_upstream_is_warned_about_and_guardproxy_defaults_fix_it(reports: dict[str, Any], check: str) -> None:
    # Missing Cache-Control is a warning (caches may guess), not a failure.
    assert statuses(reports["weak"])[check] == "warn", reports["weak"]
    assert statuses(reports["defaults"])[check] == "pass", reports["defaults"]


@pytest.mark.parametrize("check", sorted(FIXED_BY_SETTINGS))
def test_weak_upstream_fails_and_the_named_setting_fixes_it(reports: dict[str, Any], check: str) -> None:
    assert statuses(reports["weak"])[check] in ("fail", "warn")
    assert statuses(reports["defaults"])[check] in ("fail", "warn"), "defaults cannot fix this"
    assert statuses(reports["fixed"])[check] == "pass", reports["fixed"]


@pytest.mark.parametrize("check", sorted(NOT_FIXED))
def test_what_guardproxy_does_not_fix_is_reported_as_failing(reports: dict[str, Any], check: str) -> None:
    for name in ("weak", "defaults", "fixed"):
        assert statuses(reports[name])[check] == "fail", name


def test_every_check_is_reported_and_classified(reports: dict[str, Any]) -> None:
    every = {check.id for check in CHECKS}
    assert set(statuses(reports["weak"])) == every
    # Plain HTTP: no redirect to observe (a warning everywhere); the malformed request never
    # reaches the weak app (uvicorn's own plain 400 carries nothing internal).
    unlisted = every - FIXED_BY_DEFAULTS - WARNED_AND_FIXED_BY_DEFAULTS - FIXED_BY_SETTINGS - NOT_FIXED
    assert unlisted == {"https.redirect", "errors.malformed.leaks"}
    for name in ("weak", "defaults", "fixed"):
        assert statuses(reports[name])["https.redirect"] == "warn"
        assert statuses(reports[name])["errors.malformed.leaks"] == "pass"


def test_grades_and_budgets(reports: dict[str, Any]) -> None:
    weak, defaults, fixed = reports["weak"], reports["defaults"], reports["fixed"]
    assert weak["grade"] == "F"
    assert weak["score"] < defaults["score"] < fixed["score"]
    for report in (weak, defaults, fixed):
        assert report["wall_seconds"] < 30
        assert report["requests"] <= 200
    # The rate-limit probe stops at the first sign of a limit.
    assert fixed["requests"] < weak["requests"]


def test_fail_under_sets_the_exit_code(weak: UpstreamProcess) -> None:
    code, out, _, _ = audit_cli(weak.url + "/", "--fail-under", "D", "--slow-head-seconds", "1")
    assert code == 1
    assert "grade F" in out
    code, _, _, _ = audit_cli(weak.url + "/", "--fail-under", "F", "--slow-head-seconds", "1")
    assert code == 0


def test_compare_renders_both_side_by_side_in_markdown(weak: UpstreamProcess, proxies: dict[str, Guardproxy]) -> None:
    code, out, err, _ = audit_cli(
        weak.url + "/", "--compare", proxies["defaults"].url + "/", "--format", "markdown", "--slow-head-seconds", "1"
    )
    assert code == 0, err
    assert f"| A | `{weak.url}/` | **F** |" in out
    assert f"| B | `{proxies['defaults'].url}/` |" in out
    row = next(line for line in out.splitlines() if "security headers" in line)
    assert row.count("**fail**") == 1
    assert "pass: all of the api preset" in row


def test_extra_headers_reach_every_probe(weak: UpstreamProcess) -> None:
    code, out, err, _ = audit_cli(
        weak.url + "/", "--header", "X-Audit-Extra: seen-by-the-app", "--format", "json", "--slow-head-seconds", "1"
    )
    assert code == 0, err
    assert json.loads(out)["grade"] == "F"
    code, _, err, _ = audit_cli(weak.url + "/", "--header", "no colon here")
    assert code == 2
    assert "expected NAME:VALUE" in err


def test_the_https_redirect_listener_passes_the_redirect_check(
    weak: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("audit-tls")
    _, cert, key = write_certificate(directory, "localhost", "127.0.0.1")
    redirect_port = free_port()
    proxy = start_guardproxy(
        weak.url,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--redirect-listen",
        f"127.0.0.1:{redirect_port}",
        "--allowed-host",
        "localhost",
        "--allowed-host",
        "127.0.0.1",
        log_dir=directory,
    )
    try:
        plain = f"http://127.0.0.1:{redirect_port}/"
        code, out, err, _ = audit_cli(plain, "--format", "json", "--slow-head-seconds", "1")
        assert code == 0, err
        assert statuses(json.loads(out))["https.redirect"] == "pass"
        code, out, err, _ = audit_cli(
            f"https://localhost:{proxy.port}/", "--insecure", "--format", "json", "--slow-head-seconds", "1"
        )
        assert code == 0, err
        rows = {row["check"]: row for row in json.loads(out)["rows"]}
        assert rows["https.hsts"]["status"] == "pass"
        assert "max-age=31536000" in rows["https.hsts"]["evidence"]
    finally:
        proxy.stop()


def test_a_closed_port_is_a_clear_error() -> None:
    code, out, err, seconds = audit_cli(f"http://127.0.0.1:{free_port()}/")
    assert (code, out) == (2, "")
    assert "connection refused" in err
    assert "Traceback" not in err
    assert seconds < 10


def test_a_black_hole_is_a_clear_error_within_bounded_time() -> None:
    with black_hole() as port:
        code, out, err, seconds = audit_cli(f"http://127.0.0.1:{port}/")
    assert (code, out) == (2, "")
    assert "no answer within 5 s" in err
    assert seconds < 15


def test_a_target_speaking_garbage_is_a_clear_error() -> None:
    with garbage_server() as port:
        code, out, err, seconds = audit_cli(f"http://127.0.0.1:{port}/")
    assert (code, out) == (2, "")
    assert "not HTTP" in err
    assert "Traceback" not in err
    assert seconds < 10


def test_not_a_url_is_a_clear_error() -> None:
    code, _, err, _ = audit_cli("ftp://127.0.0.1/")
    assert code == 2
    assert "not an http:// or https:// URL" in err


def test_the_whole_audit_ends_within_30_s_when_the_target_stalls_half_way() -> None:
    """The default bounds, end to end: past the first answer every probe meets silence, and the
    CLI still prints a report (the stalled checks not observable) before 30 s have passed."""
    with stalls_after_one_answer() as port:
        code, out, err, seconds = audit_cli(f"http://127.0.0.1:{port}/", "--format", "json")
    assert code == 0, err
    assert seconds < 30
    rows = json.loads(out)["rows"]
    assert {row["status"] for row in rows} <= {"not observable", "fail", "warn"}
    assert sum(row["status"] == "not observable" for row in rows) >= len(rows) // 2


async def test_a_target_that_stalls_after_answering_once_ends_at_the_deadline() -> None:
    """Answers the first request, then accepts connections and never answers again: every probe
    stalls, and the audit still ends at its deadline with the stalled checks not observable."""
    answered = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await reader.readuntil(b"\r\n\r\n")
        if answered == 0:
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()
            return
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    try:
        report = await run_audit(
            f"http://127.0.0.1:{port}/", AuditOptions(timeout=30, deadline=3, bounds=Bounds(slow_head_seconds=30))
        )
    finally:
        server.close()
    assert time.monotonic() - started < 6
    assert report.grade == "F"
    stalled = [row for row in report.rows if row.status is Status.NOT_OBSERVABLE]
    assert len(stalled) >= len(report.rows) - 2
    assert any("deadline" in row.finding.evidence for row in stalled)


async def test_run_audit_raises_for_an_unreachable_target() -> None:
    with pytest.raises(AuditError, match="connection refused"):
        await run_audit(f"http://127.0.0.1:{free_port()}/")
