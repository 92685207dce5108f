"""CORS (checklist item 1), per the Fetch standard: is a foreign origin, `null`, or a foreign
preflight granted? Reflection with credentials is the classic hole: any page reads the API
with the visitor's cookies."""

from __future__ import annotations

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.evidence import Exchange, quote
from guardproxy.audit.probes.base import FOREIGN_ORIGIN, Evidence, Probe
from guardproxy.audit.session import Session


async def gather(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    evidence.exchanges["foreign"] = await session.request(
        "GET", headers=[("Origin", FOREIGN_ORIGIN)], label=f"GET with Origin: {FOREIGN_ORIGIN}"
    )
    evidence.exchanges["null"] = await session.request(
        "GET", headers=[("Origin", "null")], label="GET with Origin: null"
    )
    evidence.exchanges["preflight"] = await session.request(
        "OPTIONS",
        headers=[
            ("Origin", FOREIGN_ORIGIN),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "x-audit-probe"),
        ],
        label=f"OPTIONS preflight from {FOREIGN_ORIGIN} for PUT",
    )
    return evidence


def _grant(response: Exchange, origin: str) -> str | None:
    """How the response lets `origin` read it, in words; None when it does not."""
    allowed = (response.header("access-control-allow-origin") or "").strip()
    credentials = (response.header("access-control-allow-credentials") or "").strip().lower() == "true"
    if allowed == origin:
        grant = f"Access-Control-Allow-Origin: {quote(allowed, 40)} (reflected)"
    elif allowed == "*":
        grant = "Access-Control-Allow-Origin: *"
    else:
        return None
    if credentials:
        grant += " with Access-Control-Allow-Credentials: true"
    return grant


def judge_origin(check: str, response: Exchange, origin: str) -> Finding:
    if not response.answered:
        return Finding(check, Status.NOT_OBSERVABLE, response.outcome())
    grant = _grant(response, origin)
    if grant is None:
        return Finding(check, Status.PASS, f"{response.status}, no grant for Origin: {origin}")
    allowed = (response.header("access-control-allow-origin") or "").strip()
    credentials = (response.header("access-control-allow-credentials") or "").strip().lower() == "true"
    if allowed == "*" and not credentials:
        # Public data readable from any page: right for an open API, wrong for anything else.
        return Finding(check, Status.WARN, grant)
    if allowed != "*" and "origin" not in response.tokens("vary"):
        grant += ", no Vary: Origin"
    return Finding(check, Status.FAIL, grant)


def judge_preflight(response: Exchange) -> Finding:
    if not response.answered:
        return Finding("cors.preflight", Status.NOT_OBSERVABLE, response.outcome())
    grant = _grant(response, FOREIGN_ORIGIN)
    status = response.status or 0
    if grant is not None and 200 <= status < 300:
        methods = response.header("access-control-allow-methods")
        detail = f"{status}, {grant}" + (f", Allow-Methods: {quote(methods, 30)}" if methods else "")
        return Finding("cors.preflight", Status.FAIL, detail)
    return Finding("cors.preflight", Status.PASS, f"refused: {status}" + ("" if grant is None else f", {grant}"))


def judge(evidence: Evidence) -> list[Finding]:
    return [
        judge_origin("cors.foreign_origin", evidence.get("foreign"), FOREIGN_ORIGIN),
        judge_origin("cors.null_origin", evidence.get("null"), "null"),
        judge_preflight(evidence.get("preflight")),
    ]


CORS = Probe("cors", ("cors.foreign_origin", "cors.null_origin", "cors.preflight"), gather, judge)
