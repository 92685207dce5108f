"""Reports as text (a terminal), JSON (machines) or Markdown (a CI job summary, a README), alone
or side by side (`--compare`: the API direct vs through guardproxy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from guardproxy.audit.checks import CHECKS, Check, Status
from guardproxy.audit.report import Report, Row

FORMATS = ("text", "json", "markdown")  # what --format offers
NO_FIX = "none in guardproxy: the API must change"


def fix_text(check: Check) -> str:
    return check.fix.describe() if check.fix is not None else NO_FIX


def _item(check: Check) -> str:
    return str(check.item) if check.item is not None else "-"


def _summary(report: Report) -> str:
    counts = ", ".join(f"{report.count(status)} {status.value}" for status in Status)
    return f"{len(report.rows)} checks: {counts} · {report.requests} requests in {report.duration:.1f} s"


def _aligned(reports: Sequence[Report]) -> list[tuple[Check, list[Row | None]]]:
    """Rows of every report lined up by check, in catalogue order."""
    order: list[Check] = []
    for report in reports:
        order += [row.check for row in report.rows if row.check not in order]
    by_check = [{row.check.id: row for row in report.rows} for report in reports]
    ranked = sorted(order, key=CHECKS.index)
    return [(check, [rows.get(check.id) for rows in by_check]) for check in ranked]


def render(reports: Sequence[Report], fmt: str) -> str:
    if fmt == "json":
        return render_json(reports)
    if fmt == "markdown":
        return render_markdown(reports)
    return render_text(reports)


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "url": report.url,
        "grade": report.grade,
        "score": report.score,
        "duration_seconds": round(report.duration, 2),
        "requests": report.requests,
        "rows": [
            {
                "check": row.check.id,
                "item": row.check.item,
                "title": row.check.title,
                "weight": row.check.weight,
                "status": row.status.value,
                "evidence": row.finding.evidence,
                "fix": fix_text(row.check),
            }
            for row in report.rows
        ],
    }


def render_json(reports: Sequence[Report]) -> str:
    payload: Any = report_dict(reports[0]) if len(reports) == 1 else {"reports": [report_dict(r) for r in reports]}
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n"


def _status_word(row: Row | None) -> str:
    return row.status.value if row is not None else "—"


def render_text(reports: Sequence[Report]) -> str:
    lines = []
    for index, report in enumerate(reports):
        label = f"[{chr(65 + index)}] " if len(reports) > 1 else ""
        lines.append(f"{label}guardproxy audit of {report.url}")
        lines.append(f"{' ' * len(label)}{_summary(report)}")
        lines.append(f"{' ' * len(label)}grade {report.grade}, score {report.score}/100")
    lines.append("")
    title_width = max(len(check.title) for check, _ in _aligned(reports))
    status_width = len("not observable")
    head = f"{'#':>3}  {'check':<{title_width}}  " + "  ".join(
        f"{(chr(65 + i) if len(reports) > 1 else 'result'):<{status_width}}" for i in range(len(reports))
    )
    lines += [head.rstrip(), "-" * len(head.rstrip())]
    for check, rows in _aligned(reports):
        statuses = "  ".join(
            f"{_status_word(row).upper() if row and row.status is Status.FAIL else _status_word(row):<{status_width}}"
            for row in rows
        )
        lines.append(f"{_item(check):>3}  {check.title:<{title_width}}  {statuses}".rstrip())
        for index, row in enumerate(rows):
            if row is not None:
                label = f"{chr(65 + index)}: " if len(reports) > 1 else ""
                lines.append(f"{'':>3}  {label}{row.finding.evidence}")
        if any(row is not None and row.status in (Status.FAIL, Status.WARN) for row in rows):
            lines.append(f"{'':>3}  fix: {fix_text(check)}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_status(row: Row | None) -> str:
    if row is None:
        return "—"
    word = row.status.value
    return f"**{word}**" if row.status is Status.FAIL else word


def render_markdown(reports: Sequence[Report]) -> str:
    lines = []
    if len(reports) == 1:
        report = reports[0]
        lines += [
            f"### guardproxy audit: `{report.url}`",
            "",
            f"**Grade {report.grade}** (score {report.score}/100) · {_summary(report)}",
            "",
            "| # | check | result | evidence | guardproxy fix |",
            "|---|---|---|---|---|",
        ]
        for row in report.rows:
            lines.append(
                f"| {_item(row.check)} | {_cell(row.check.title)} | {_md_status(row)} | "
                f"{_cell(row.finding.evidence)} | {_cell(fix_text(row.check))} |"
            )
        return "\n".join(lines) + "\n"
    lines += ["### guardproxy audit, side by side", "", "| | URL | grade | score | checks |", "|---|---|---|---|---|"]
    for index, report in enumerate(reports):
        summary = _cell(_summary(report))
        lines.append(f"| {chr(65 + index)} | `{report.url}` | **{report.grade}** | {report.score}/100 | {summary} |")
    columns = " | ".join(chr(65 + index) for index in range(len(reports)))
    lines += ["", f"| # | check | {columns} | guardproxy fix |", "|---|---|" + "---|" * len(reports) + "---|"]
    for check, rows in _aligned(reports):
        cells = " | ".join(
            f"{_md_status(row)}: {_cell(row.finding.evidence)}" if row is not None else "—" for row in rows
        )
        lines.append(f"| {_item(check)} | {_cell(check.title)} | {cells} | {_cell(fix_text(check))} |")
    return "\n".join(lines) + "\n"
