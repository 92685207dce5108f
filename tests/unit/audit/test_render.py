"""Rendering reports (audit/render.py): text, JSON and Markdown, alone and side by side."""

from __future__ import annotations

import argparse

import orjson

from guardproxy.audit import command
from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.render import FORMATS, NO_FIX, render
from guardproxy.audit.report import Report

DIRECT = Report.build(
    "http://127.0.0.1:8000/",
    [
        Finding("cors.foreign_origin", Status.FAIL, "Access-Control-Allow-Origin: x | y (reflected)"),
        Finding("headers.banners", Status.FAIL, "Server: WeakServer/1.4.2"),
        Finding("errors.not_found.leaks", Status.FAIL, "404 with a Python traceback"),
        Finding("compression", Status.NOT_OBSERVABLE, "12 bytes"),
    ],
    duration=12.34,
    requests=70,
)
PROXIED = Report.build(
    "http://127.0.0.1:8080/",
    [
        Finding("cors.foreign_origin", Status.PASS, "200, no grant"),
        Finding("headers.banners", Status.PASS, "no Server, X-Powered-By"),
        Finding("errors.not_found.leaks", Status.FAIL, "404 with a Python traceback"),
        Finding("methods.trace", Status.WARN, "200: TRACE accepted"),
    ],
    duration=10.1,
    requests=60,
)


def test_json_carries_every_row_with_its_fix() -> None:
    payload = orjson.loads(render([DIRECT], "json"))
    assert payload["grade"] == DIRECT.grade == "F"
    assert payload["score"] == 0
    assert payload["requests"] == 70
    assert payload["duration_seconds"] == 12.34
    rows = {row["check"]: row for row in payload["rows"]}
    assert rows["cors.foreign_origin"]["item"] == 1
    assert rows["cors.foreign_origin"]["fix"].startswith("--cors-origin ORIGIN / `cors.origins`")
    assert rows["errors.not_found.leaks"]["fix"] == NO_FIX
    assert rows["compression"]["status"] == "not observable"


def test_json_compare_is_a_list_of_reports() -> None:
    payload = orjson.loads(render([DIRECT, PROXIED], "json"))
    assert [report["url"] for report in payload["reports"]] == [DIRECT.url, PROXIED.url]


def test_markdown_table_escapes_pipes() -> None:
    out = render([DIRECT], "markdown")
    assert out.startswith("### guardproxy audit: `http://127.0.0.1:8000/`")
    assert "**Grade F** (score 0/100)" in out
    assert "| 1 | CORS: a foreign origin is not granted | **fail** | Access-Control-Allow-Origin: x \\| y" in out
    header, separator = out.splitlines()[4:6]
    assert header.count("|") == separator.count("|")


def test_markdown_compare_lines_up_rows_by_check() -> None:
    out = render([DIRECT, PROXIED], "markdown")
    assert "| A | `http://127.0.0.1:8000/` | **F** |" in out
    assert f"| B | `http://127.0.0.1:8080/` | **{PROXIED.grade}** |" in out
    banners = next(line for line in out.splitlines() if "banners" in line)
    assert "**fail**: Server: WeakServer/1.4.2 | pass: no Server, X-Powered-By" in banners
    trace = next(line for line in out.splitlines() if "TRACE" in line)
    assert trace.startswith("| - | TRACE is refused")
    assert "| — | warn: 200: TRACE accepted |" in trace  # a check only one side reported


def test_text_shows_evidence_and_the_fix_for_what_is_not_passing() -> None:
    out = render([DIRECT, PROXIED], "text")
    assert "[A] guardproxy audit of http://127.0.0.1:8000/" in out
    assert "grade F, score 0/100" in out
    lines = out.splitlines()
    cors = next(index for index, line in enumerate(lines) if "CORS: a foreign origin" in line)
    assert "FAIL" in lines[cors]
    assert "pass" in lines[cors]
    assert lines[cors + 1].strip().startswith("A: Access-Control-Allow-Origin")
    assert lines[cors + 3].strip().startswith("fix: --cors-origin")
    single = render([PROXIED], "text")
    banners = next(index for index, line in enumerate(single.splitlines()) if "banners" in line)
    assert "fix:" not in single.splitlines()[banners + 2]  # a pass needs no fix


def test_the_cli_offers_every_format() -> None:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    for fmt in FORMATS:
        assert parser.parse_args(["audit", "http://x/", "--format", fmt]).format == fmt
