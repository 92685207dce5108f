"""Who is asking and for which host: request IDs (2), a foreign Host (17), a spoofed
X-Forwarded-For (18)."""

from __future__ import annotations

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.evidence import Exchange, quote
from guardproxy.audit.probes.base import FOREIGN_HOST, SPOOFED_ADDRESS, Evidence, Probe, marker
from guardproxy.audit.session import Session

# Names in common use for a per-request ID sent back to the client.
ID_HEADERS = ("x-request-id", "request-id", "x-correlation-id", "x-amzn-requestid", "x-amz-request-id", "x-trace-id")


def request_id_of(response: Exchange) -> tuple[str, str] | None:
    for name in ID_HEADERS:
        value = response.header(name)
        if value:
            return name, value
    return None


async def gather_request_id(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    evidence.exchanges["first"] = await session.request("GET", label="GET without X-Request-ID")
    evidence.exchanges["second"] = await session.request("GET", label="GET without X-Request-ID, again")
    sent = evidence.sent["request_id"] = marker()
    evidence.exchanges["sent"] = await session.request(
        "GET", headers=[("X-Request-ID", sent)], label=f"GET with X-Request-ID: {sent}"
    )
    return evidence


def judge_request_id(evidence: Evidence) -> list[Finding]:
    first, second, sent = evidence.get("first"), evidence.get("second"), evidence.get("sent")
    findings = []
    if not (first.answered and second.answered):
        findings.append(Finding("request_id.present", Status.NOT_OBSERVABLE, first.outcome()))
    else:
        ids = request_id_of(first), request_id_of(second)
        if ids[0] is None or ids[1] is None:
            names = "/".join(name.title() for name in ID_HEADERS[:3])
            findings.append(Finding("request_id.present", Status.FAIL, f"no {names} on the response"))
        elif ids[0][1] == ids[1][1]:
            findings.append(Finding("request_id.present", Status.FAIL, f"the same {ids[0][0]} twice: {ids[0][1]}"))
        else:
            findings.append(Finding("request_id.present", Status.PASS, f"{ids[0][0]}: {quote(ids[0][1], 40)}, unique"))
    if not sent.answered:
        findings.append(Finding("request_id.echoed", Status.NOT_OBSERVABLE, sent.outcome()))
    else:
        echoed = request_id_of(sent)
        wanted = evidence.sent.get("request_id", "")
        if echoed is None:
            findings.append(Finding("request_id.echoed", Status.FAIL, "not echoed, and no ID of its own"))
        elif echoed[1] == wanted:
            findings.append(Finding("request_id.echoed", Status.PASS, f"{echoed[0]}: {wanted} echoed"))
        else:
            # Replacing a client's ID is a choice (untrusted clients), not a hole.
            detail = f"replaced by {quote(echoed[1], 40)} (right when clients may not choose it)"
            findings.append(Finding("request_id.echoed", Status.WARN, detail))
    return findings


REQUEST_ID = Probe("request id", ("request_id.present", "request_id.echoed"), gather_request_id, judge_request_id)


async def gather_host(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    evidence.exchanges["foreign"] = await session.request(
        "GET", headers=[("Host", FOREIGN_HOST)], label=f"GET with Host: {FOREIGN_HOST}"
    )
    return evidence


def judge_host(evidence: Evidence) -> list[Finding]:
    response = evidence.get("foreign")
    if not response.answered:
        return [Finding("hosts.foreign", Status.NOT_OBSERVABLE, response.outcome())]
    status = response.status or 0
    location = response.header("location") or ""
    if FOREIGN_HOST in location.lower():
        return [Finding("hosts.foreign", Status.FAIL, f"{status}, reflected in Location: {quote(location, 50)}")]
    reflected = [name for name, value in response.headers if FOREIGN_HOST in value.lower()]
    if reflected:
        return [Finding("hosts.foreign", Status.FAIL, f"{status}, reflected in {', '.join(reflected)}")]
    if FOREIGN_HOST in response.text.lower():
        return [Finding("hosts.foreign", Status.FAIL, f"{status}, reflected in the body")]
    if status in (400, 403, 404, 421):
        return [Finding("hosts.foreign", Status.PASS, f"refused: {status}")]
    return [Finding("hosts.foreign", Status.WARN, f"answered {status} for a foreign Host (not reflected here)")]


HOST = Probe("host header", ("hosts.foreign",), gather_host, judge_host)


async def gather_client_ip(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    seen = evidence.sent["marker"] = marker()
    evidence.exchanges["spoofed"] = await session.request(
        "GET",
        headers=[
            ("X-Forwarded-For", SPOOFED_ADDRESS),
            ("Forwarded", f"for={SPOOFED_ADDRESS}"),
            ("X-Audit-Marker", seen),
        ],
        label=f"GET with X-Forwarded-For: {SPOOFED_ADDRESS}",
    )
    return evidence


def judge_client_ip(evidence: Evidence) -> list[Finding]:
    response = evidence.get("spoofed")
    if not response.answered:
        return [Finding("client_ip.spoofed", Status.NOT_OBSERVABLE, response.outcome())]
    in_headers = [name for name, value in response.headers if SPOOFED_ADDRESS in value]
    if in_headers or SPOOFED_ADDRESS in response.text:
        where = ", ".join(in_headers) if in_headers else "the body"
        return [Finding("client_ip.spoofed", Status.FAIL, f"the spoofed {SPOOFED_ADDRESS} came back in {where}")]
    if evidence.sent.get("marker", "\0") in response.text:
        detail = f"the response echoes request headers, but not the spoofed {SPOOFED_ADDRESS}"
        return [Finding("client_ip.spoofed", Status.PASS, detail)]
    return [Finding("client_ip.spoofed", Status.NOT_OBSERVABLE, "the response shows nothing of the request")]


CLIENT_IP = Probe("client address", ("client_ip.spoofed",), gather_client_ip, judge_client_ip)
