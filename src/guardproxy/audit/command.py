"""The `guardproxy audit` subcommand: its arguments and its exit codes.

Exit codes: 0 the audit ran (and met --fail-under, if given); 1 a grade below --fail-under;
2 the target could not be audited (unreachable, not HTTP, a bad argument). Kept light at import
time: the CLI builds this parser for every command, the audit machinery loads only when run.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

EXIT_BELOW_GRADE = 1
EXIT_CANNOT_AUDIT = 2
GRADE_CHOICES = ("A+", "A", "B", "C", "D", "F")
_METHOD = re.compile(r"[A-Z]{1,32}")


def add_parser(commands: Any) -> None:
    """Add `audit` to the CLI's subcommands (an argparse _SubParsersAction)."""
    description = (
        "Probe a live API from outside with safe, bounded requests and report, per production-checklist "
        "item, pass/warn/fail with the evidence and the guardproxy setting that fixes it."
    )
    command = commands.add_parser("audit", help="audit a live API against the checklist", description=description)
    command.add_argument("url", metavar="URL", help="the URL to audit, e.g. http://127.0.0.1:8000/")
    command.add_argument("--compare", metavar="URL2", help="audit this URL too and show both side by side")
    command.add_argument(
        "--header", action="append", default=[], metavar="K:V", help="send this header with every probe (repeatable)"
    )
    command.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="METHOD",
        help="also allow this method (e.g. POST for the body-limit probe); GET/HEAD/OPTIONS/TRACE only otherwise",
    )
    # The same names as render.FORMATS, spelled out so building the parser loads no renderer.
    command.add_argument("--format", choices=("text", "json", "markdown"), default="text", help="report format [text]")
    command.add_argument(
        "--fail-under", choices=GRADE_CHOICES, metavar="GRADE", help="exit 1 when a grade is below this (A+ A B C D F)"
    )
    command.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per request [5]")
    command.add_argument("--burst", type=int, default=50, metavar="N", help="requests the rate-limit probe sends [50]")
    command.add_argument(
        "--slow-head-seconds", type=float, default=12.0, metavar="SECONDS", help="how long the head is dripped [12]"
    )
    command.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")


def _headers(values: list[str]) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, sep, field_value = value.partition(":")
        name = name.strip()
        if not sep or not name or any(char in name for char in ' \t\r\n()<>@,;:\\"/[]?={}'):
            raise ValueError(f"--header {value!r}: expected NAME:VALUE")
        if "\r" in field_value or "\n" in field_value:
            raise ValueError(f"--header {value!r}: a value may not contain a line break")
        headers.append((name, field_value.strip()))
    return headers


def main(args: argparse.Namespace) -> int:
    # Imported here so the other commands never load httpx and the probes.
    import asyncio  # noqa: PLC0415

    from guardproxy.audit.render import render  # noqa: PLC0415
    from guardproxy.audit.report import at_least  # noqa: PLC0415
    from guardproxy.audit.runner import AuditError, AuditOptions, run_audit  # noqa: PLC0415
    from guardproxy.audit.session import Bounds  # noqa: PLC0415

    try:
        headers = _headers(args.header)
        methods = [method.upper() for method in args.method]
        if not all(_METHOD.fullmatch(method) for method in methods):
            raise ValueError(f"--method {args.method!r}: not an HTTP method")
        if args.timeout <= 0 or args.burst < 1 or args.slow_head_seconds <= 0:
            raise ValueError("--timeout, --burst and --slow-head-seconds must be positive")
    except ValueError as exc:
        print(f"guardproxy audit: {exc}", file=sys.stderr)
        return EXIT_CANNOT_AUDIT
    options = AuditOptions(
        headers=headers,
        methods=methods,
        timeout=args.timeout,
        verify_tls=not args.insecure,
        bounds=Bounds(burst=args.burst, slow_head_seconds=args.slow_head_seconds),
    )
    urls = [args.url] + ([args.compare] if args.compare else [])

    async def audit_all() -> list[Any]:
        return list(await asyncio.gather(*(run_audit(url, options) for url in urls)))

    try:
        reports = asyncio.run(audit_all())
    except AuditError as exc:
        print(f"guardproxy audit: cannot audit {exc}", file=sys.stderr)
        return EXIT_CANNOT_AUDIT
    sys.stdout.write(render(reports, args.format))
    if args.fail_under and not all(at_least(report.grade, args.fail_under) for report in reports):
        return EXIT_BELOW_GRADE
    return 0
