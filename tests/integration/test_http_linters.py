"""REDbot and drheader, real tools over real sockets: guardproxy adds no REDbot warning of its own
to what the upstream already earns, and drheader's findings for the api preset are exactly the
ones the README decides against.

Both tools live in build/lint-venv (tests/lint/requirements.txt): drheader pins a PyYAML that
clashes with constraints.txt, so they cannot share .venv.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.processes import Guardproxy, UpstreamProcess

ROOT = Path(__file__).resolve().parents[2]
LINT_VENV = ROOT / "build" / "lint-venv" / "bin"
INSTALL = "python3 -m venv build/lint-venv && build/lint-venv/bin/pip install -r tests/lint/requirements.txt"
# REDbot levels that are complaints; GOOD and INFO are not.
COMPLAINTS = frozenset({"WARN", "BAD"})
# Responses of every kind the upstream app gives: known and unknown lengths, small and large,
# validators, a 304, a redirect, cookies, an error, server-sent events.
TARGETS = (
    "/echo",
    "/payload?size=5000",
    "/payload?size=5000&chunked=1",
    "/payload?size=40&chunked=1",
    '/payload?size=5000&h=etag:"v1"',
    "/status/304",
    "/status/404",
    "/redirect",
    "/cookies",
    "/sse?n=2&interval=0.1",
)
# drheader's default rules against the api preset over plain HTTP: each is decided against in the
# README ("What drheader still reports, and why").
DECIDED_AGAINST = {"Cache-Control", "Pragma", "Strict-Transport-Security", "X-XSS-Protection"}


def tool(name: str) -> str:
    path = LINT_VENV / name
    assert path.exists(), f"{name} is not installed: {INSTALL}"
    return str(path)


def redbot_complaints(url: str) -> set[tuple[str, str]]:
    """(level, note id) of every warning REDbot has about `url`, its follow-up probes included."""
    done = subprocess.run([tool("redbot"), "-o", "har", url], capture_output=True, timeout=120, check=True)
    har = json.loads(done.stdout)
    entries = har["log"]["entries"]
    assert entries, f"REDbot fetched nothing from {url}: {done.stderr!r}"
    return {
        (note["level"], note["note_id"])
        for entry in entries
        for note in entry.get("_red_messages", [])
        if note["level"] in COMPLAINTS
    }


@pytest.fixture(scope="module")
def complaints(upstream: UpstreamProcess, proxy: Guardproxy) -> Callable[[str], set[tuple[str, str]]]:
    """REDbot's complaints about each target, directly and through guardproxy, run concurrently
    (REDbot mostly waits on the network): the proxy's complaints minus the upstream's."""
    urls = [base + target for target in TARGETS for base in (upstream.url, proxy.url)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        found = dict(zip(urls, pool.map(redbot_complaints, urls), strict=True))

    def added(target: str) -> set[tuple[str, str]]:
        return found[proxy.url + target] - found[upstream.url + target]

    return added


@pytest.mark.parametrize("target", TARGETS)
def test_redbot_finds_no_warning_that_guardproxy_adds(complaints, target: str) -> None:  # type: ignore[no-untyped-def]
    assert complaints(target) == set()


def test_redbot_sees_what_the_upstream_earns_so_the_comparison_can_fail(upstream: UpstreamProcess) -> None:
    """The upstream app sends no Cache-Control: REDbot says caches may guess a lifetime."""
    assert ("WARN", "FRESHNESS_HEURISTIC") in redbot_complaints(f"{upstream.url}/echo")


def drheader_findings(url: str) -> list[dict[str, object]]:
    # drheader exits non-zero when it has findings, and prints no JSON when it has none.
    command = [tool("drheader"), "scan", "single", "-o", "json", url]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    output = done.stdout.strip()
    assert output.startswith(b"[") or b"No issues found" in output, (done.stdout, done.stderr)
    return json.loads(output) if output.startswith(b"[") else []  # type: ignore[no-any-return]


def test_drheader_finds_only_what_the_readme_decides_against(proxy: Guardproxy) -> None:
    findings = drheader_findings(f"{proxy.url}/echo")
    assert {finding["rule"] for finding in findings} == DECIDED_AGAINST, findings


def test_drheader_finds_more_at_the_bare_upstream(upstream: UpstreamProcess) -> None:
    rules = {finding["rule"] for finding in drheader_findings(f"{upstream.url}/echo")}
    assert {"Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Server"} <= rules


def test_every_decision_against_is_explained_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### What drheader still reports, and why", 1)[1].split("\n## ", 1)[0]
    for rule in DECIDED_AGAINST:
        assert f"`{rule}`" in section, rule
