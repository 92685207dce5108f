"""Error responses (checklist items 10-12): a 404, a request the application chokes on, and a
malformed request. Are they RFC 9457 problems, do they carry the request ID, do they leak stack
traces, file paths or internal addresses? Also: an encoded dot-segment (46), and TRACE, the
method that echoes a request back."""

from __future__ import annotations

import re

import orjson

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.evidence import Exchange, quote
from guardproxy.audit.probes.base import Evidence, Probe, marker
from guardproxy.audit.probes.identity import request_id_of
from guardproxy.audit.session import Session

# What a stack trace, a source path or an internal address looks like in an error body.
LEAKS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a Python traceback", re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")),
    ("a Java stack trace", re.compile(r"\bat [\w$.]+\([\w$]+\.java:\d+\)|java\.lang\.\w+(Exception|Error)")),
    ("a Node stack trace", re.compile(r"\bat [\w$.<>]+ \((?:/|[A-Za-z]:\\)[^)]+:\d+:\d+\)")),
    ("a PHP error", re.compile(r"(Fatal error|Warning|Notice): .+ in .+ on line \d+")),
    ("a .NET stack trace", re.compile(r"at [\w.]+\(.*\) in .+:line \d+")),
    (
        "a source file path",
        re.compile(
            r"(?:/(?:usr|home|srv|var|opt|app|src|root)/|[A-Za-z]:\\)[\w./\\-]+\.(?:py|rb|php|js|ts|java|go|cs)\b"
        ),
    ),
    (
        "an internal address",
        re.compile(
            r"\b(?:10\.\d{1,3}\.\d{1,3}\.\d{1,3}|192\.168\.\d{1,3}\.\d{1,3}|172\.(?:1[6-9]|2\d|3[01])\.\d{1,3}\.\d{1,3}"
            r"|127\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d+)\b"
        ),
    ),
)
MALFORMED_HEAD = "Bad Header: a field name may not contain a space"


def find_leak(body: str) -> str | None:
    for kind, pattern in LEAKS:
        match = pattern.search(body)
        if match:
            return f"{kind}: {quote(match.group(0), 50)}"
    return None


async def gather(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    missing = f"/{marker()}-does-not-exist"
    evidence.exchanges["not_found"] = await session.request("GET", missing, label=f"GET {missing}")
    # Bytes that are not UTF-8 once percent-decoded: a classic way into an unhandled exception.
    undecodable = session.target.target.split("?", 1)[0].rstrip("/") + "/%ff%fe%fd"
    evidence.exchanges["server_error"] = await session.request("GET", undecodable, label=f"GET {undecodable}")
    # RFC 9110 §5.1: a field name is a token, so a space in it makes the head malformed.
    head = session.head("GET").replace(b"\r\n\r\n", f"\r\n{MALFORMED_HEAD}\r\n\r\n".encode(), 1)
    evidence.exchanges["malformed"] = await session.raw(head, "GET with a header name containing a space")
    return evidence


def json_body(response: Exchange) -> object | None:
    try:
        return orjson.loads(response.body) if response.media_type.endswith("json") else None
    except orjson.JSONDecodeError:
        return None


def judge_format(check: str, response: Exchange) -> Finding:
    if not response.answered:
        return Finding(check, Status.NOT_OBSERVABLE, response.outcome())
    media = response.media_type or "no Content-Type"
    body = json_body(response)
    # RFC 9457 §3: a problem object; `title` and `status` are what clients rely on.
    if media == "application/problem+json" and isinstance(body, dict) and "title" in body and "status" in body:
        return Finding(check, Status.PASS, f"{response.status} application/problem+json")
    if body is not None:
        return Finding(check, Status.WARN, f"{response.status} {media}, not a problem")
    if media.endswith("json"):
        return Finding(check, Status.FAIL, f"{response.status} {media} that is not JSON")
    return Finding(check, Status.FAIL, f"{response.status} {media}")


def judge_leaks(check: str, response: Exchange) -> Finding:
    if not response.answered:
        return Finding(check, Status.NOT_OBSERVABLE, response.outcome())
    leak = find_leak(response.text) or find_leak(" ".join(value for _, value in response.headers))
    if leak:
        return Finding(check, Status.FAIL, f"{response.status} with {leak}")
    return Finding(check, Status.PASS, f"{response.status}, {len(response.body)} bytes, nothing internal")


def judge_request_id(responses: dict[str, Exchange]) -> Finding:
    answered = {role: response for role, response in responses.items() if response.answered}
    if not answered:
        return Finding("errors.request_id", Status.NOT_OBSERVABLE, "no error response")
    without = []
    for role, response in answered.items():
        in_body = "request_id" in response.text or "requestId" in response.text
        if request_id_of(response) is None and not in_body:
            without.append(f"{role.replace('_', ' ')} ({response.status})")
    if not without:
        return Finding("errors.request_id", Status.PASS, "on " + ", ".join(role.replace("_", " ") for role in answered))
    return Finding("errors.request_id", Status.FAIL, "none on " + ", ".join(without))


def judge(evidence: Evidence) -> list[Finding]:
    not_found, server_error, malformed = (evidence.get(role) for role in ("not_found", "server_error", "malformed"))
    findings = [
        judge_format("errors.not_found.format", not_found),
        judge_format("errors.malformed.format", malformed),
        judge_request_id({"404": not_found, "malformed request": malformed}),
        judge_leaks("errors.not_found.leaks", not_found),
        judge_leaks("errors.malformed.leaks", malformed),
    ]
    if server_error.answered and (server_error.status or 0) < 500:
        findings.append(
            Finding(
                "errors.server_error.leaks",
                Status.NOT_OBSERVABLE,
                f"no 5xx provoked ({server_error.status} for undecodable percent-escapes)",
            )
        )
    else:
        findings.append(judge_leaks("errors.server_error.leaks", server_error))
    return findings


ERRORS = Probe(
    "errors",
    (
        "errors.not_found.format",
        "errors.malformed.format",
        "errors.request_id",
        "errors.not_found.leaks",
        "errors.malformed.leaks",
        "errors.server_error.leaks",
    ),
    gather,
    judge,
)


async def gather_traversal(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    # RFC 3986 §2.3/§6.2.2.2: a server that decodes %2e before removing dot-segments resolves
    # this to the audited path itself; one that checks paths first refuses it.
    base = session.target.target.split("?", 1)[0].rstrip("/")
    target = f"{base}/{marker()}/%2e%2e/"
    evidence.exchanges["traversal"] = await session.request("GET", target, label=f"GET {target}")
    return evidence


def judge_traversal(evidence: Evidence) -> list[Finding]:
    response = evidence.get("traversal")
    if not response.answered:
        return [Finding("paths.traversal", Status.NOT_OBSERVABLE, response.outcome())]
    status = response.status or 0
    if status == 400:
        return [Finding("paths.traversal", Status.PASS, "refused: 400")]
    if status < 400:
        detail = f"{status}: the encoded dot-segment was resolved (a path that does not exist was served)"
        return [Finding("paths.traversal", Status.FAIL, detail)]
    return [Finding("paths.traversal", Status.WARN, f"{status}: not refused, the application decided")]


TRAVERSAL = Probe("path traversal", ("paths.traversal",), gather_traversal, judge_traversal)


async def gather_trace(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    seen = evidence.sent["marker"] = marker()
    evidence.exchanges["trace"] = await session.request(
        "TRACE", headers=[("X-Audit-Marker", seen)], label="TRACE with a marker header"
    )
    return evidence


def judge_trace(evidence: Evidence) -> list[Finding]:
    response = evidence.get("trace")
    if not response.answered:
        return [Finding("methods.trace", Status.NOT_OBSERVABLE, response.outcome())]
    status = response.status or 0
    if 200 <= status < 300:
        if evidence.sent.get("marker", "\0") in response.text:
            return [Finding("methods.trace", Status.FAIL, f"{status}, the request echoed back ({response.media_type})")]
        return [Finding("methods.trace", Status.WARN, f"{status}: TRACE accepted (no echo seen)")]
    return [Finding("methods.trace", Status.PASS, f"refused: {status}")]


TRACE = Probe("trace", ("methods.trace",), gather_trace, judge_trace)
