"""Limits seen from outside: a rate limit within a bounded burst (8), an oversized declared body
(19), URI and header sizes (20), a dripped request head (21). Each one is bounded: the burst
stops at the first sign of a limit, the body is declared but only a little of it is sent, the
drip uses one connection for a fixed number of seconds."""

from __future__ import annotations

import asyncio
import time

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.evidence import Exchange, quote
from guardproxy.audit.probes.base import Evidence, Probe
from guardproxy.audit.session import Session
from guardproxy.audit.wire import close, connect_error, read_response

# draft-ietf-httpapi-ratelimit-headers, and the X-RateLimit-* fields that came before it.
RATE_LIMIT_HEADERS = ("ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining", "retry-after")
URI_PROBE_BYTES = 16 * 1024  # over guardproxy's 8 KiB and nginx's 8 KiB buffers
HEADER_PROBE_BYTES = 32 * 1024  # over guardproxy's 16 KiB head limit
_SIZE_REFUSALS = (400, 413, 414, 431, 494)


def rate_limit_signal(response: Exchange) -> str | None:
    if response.status == 429:
        retry = response.header("retry-after")
        return f"429 with Retry-After: {retry}" if retry else "429 without Retry-After"
    for name in RATE_LIMIT_HEADERS:
        value = response.header(name)
        if value:
            return f"{name}: {quote(value, 50)}"
    return None


async def gather_rate_limit(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    started = time.monotonic()
    sent = failed = 0
    statuses: set[int] = set()
    for _ in range(session.bounds.burst):
        response = await session.request("GET")
        sent += 1
        if not response.answered:
            failed += 1
            if response.error == "request budget spent":
                break
            continue
        statuses.add(response.status or 0)
        evidence.exchanges.setdefault("first", response)
        if rate_limit_signal(response):
            evidence.exchanges["signal"] = response
            break
    evidence.figures.update(sent=sent, failed=failed, seconds=time.monotonic() - started)
    evidence.sent["statuses"] = ",".join(str(status) for status in sorted(statuses))
    return evidence


def judge_rate_limit(evidence: Evidence) -> list[Finding]:
    sent, failed = int(evidence.figures.get("sent", 0)), int(evidence.figures.get("failed", 0))
    seconds = evidence.figures.get("seconds", 0.0)
    signal = evidence.exchanges.get("signal")
    if signal is not None:
        reason = rate_limit_signal(signal) or ""
        status = Status.WARN if reason == "429 without Retry-After" else Status.PASS
        return [Finding("rate_limit", status, f"{reason} (request {sent})")]
    if sent and failed == sent:
        return [Finding("rate_limit", Status.NOT_OBSERVABLE, "no request of the burst was answered")]
    if failed:
        detail = f"{failed} of {sent} requests dropped without an answer, no 429 or RateLimit fields"
        return [Finding("rate_limit", Status.WARN, detail)]
    statuses = evidence.sent.get("statuses", "")
    detail = f"{sent} requests in {seconds:.1f} s all answered ({statuses}): no 429, no RateLimit fields"
    return [Finding("rate_limit", Status.FAIL, detail)]


RATE_LIMIT = Probe("rate limit", ("rate_limit",), gather_rate_limit, judge_rate_limit)


async def gather_body_limit(session: Session) -> Evidence:
    """Declare a big body, send a little of it, and see whether the server refuses first."""
    evidence = Evidence(session.target)
    bounds = session.bounds
    method = "POST" if session.allows("POST") else "GET"
    label = f"{method} declaring Content-Length: {bounds.declared_body}, sending {bounds.sent_body} bytes"
    evidence.sent["method"] = method
    if not await session.budget.take():
        evidence.exchanges["oversized"] = Exchange(label, error="request budget spent")
        return evidence
    started = time.monotonic()
    try:
        reader, writer = await session.endpoint.connect(session.timeout)
    except (TimeoutError, OSError) as exc:
        evidence.exchanges["oversized"] = Exchange(label, error=connect_error(exc, session.timeout))
        return evidence
    evidence.figures["connected"] = 1
    try:
        head = session.head(
            method, [("Content-Type", "application/octet-stream"), ("Content-Length", str(bounds.declared_body))]
        )
        try:
            writer.write(head + b"\0" * bounds.sent_body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # refused and closed while we were sending: the answer, if any, is what counts
        evidence.exchanges["oversized"] = await read_response(reader, label, timeout=bounds.body_wait, started=started)
    finally:
        await close(writer)
    evidence.figures["declared"] = bounds.declared_body
    return evidence


def judge_body_limit(evidence: Evidence) -> list[Finding]:
    response = evidence.get("oversized")
    declared = int(evidence.figures.get("declared", 0)) // (1024 * 1024)
    if not evidence.figures.get("connected"):
        return [Finding("body_limit", Status.NOT_OBSERVABLE, response.outcome())]
    if response.status == 413:
        return [Finding("body_limit", Status.PASS, f"413 for a declared {declared} MiB, before the body")]
    if response.status is None:
        if response.closed:
            return [Finding("body_limit", Status.WARN, f"closed without a status for a declared {declared} MiB")]
        detail = f"no answer to a declared {declared} MiB: waiting for the body ({response.outcome()})"
        return [Finding("body_limit", Status.FAIL, detail)]
    if 400 <= response.status < 500:
        return [Finding("body_limit", Status.WARN, f"refused with {response.status}, not 413")]
    return [Finding("body_limit", Status.FAIL, f"{response.status} for a declared {declared} MiB body")]


BODY_LIMIT = Probe("body limit", ("body_limit",), gather_body_limit, judge_body_limit)


async def gather_head_limits(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    path = session.target.target.split("?", 1)[0]
    long_target = f"{path}?audit={'a' * URI_PROBE_BYTES}"
    evidence.exchanges["uri"] = await session.raw(
        session.head("GET", target=long_target), f"GET with a {URI_PROBE_BYTES // 1024} KiB URI"
    )
    padding = "a" * HEADER_PROBE_BYTES
    evidence.exchanges["header"] = await session.raw(
        session.head("GET", [("X-Audit-Padding", padding)]), f"GET with a {HEADER_PROBE_BYTES // 1024} KiB header"
    )
    return evidence


def judge_head_limits(evidence: Evidence) -> list[Finding]:
    uri, header = evidence.get("uri"), evidence.get("header")
    results: list[tuple[bool | None, str]] = []
    for name, response in (("URI", uri), ("header", header)):
        size = (URI_PROBE_BYTES if name == "URI" else HEADER_PROBE_BYTES) // 1024
        if response.status in _SIZE_REFUSALS:
            results.append((True, f"{size} KiB {name}: {response.status}"))
        elif response.status is None and response.closed:
            results.append((True, f"{size} KiB {name}: connection closed"))
        elif response.status is None:
            results.append((None, f"{size} KiB {name}: {response.outcome()}"))
        else:
            results.append((False, f"{size} KiB {name}: accepted ({response.status})"))
    evidence_text = ", ".join(text for _, text in results)
    verdicts = [ok for ok, _ in results]
    if None in verdicts:
        return [Finding("limits.head", Status.NOT_OBSERVABLE, evidence_text)]
    if all(verdicts):
        return [Finding("limits.head", Status.PASS, evidence_text)]
    return [Finding("limits.head", Status.FAIL if not any(verdicts) else Status.WARN, evidence_text)]


HEAD_LIMITS = Probe("head limits", ("limits.head",), gather_head_limits, judge_head_limits)


async def gather_slow_head(session: Session) -> Evidence:
    """One connection: a request line, then one header line per interval, never the end of the
    head, for at most `slow_head_seconds`. A server with a head deadline cuts it off."""
    evidence = Evidence(session.target)
    bounds = session.bounds
    label = f"a head dripped one line per {bounds.drip_interval:g} s for {bounds.slow_head_seconds:g} s"
    evidence.figures["bound"] = bounds.slow_head_seconds
    if not await session.budget.take():
        evidence.exchanges["drip"] = Exchange(label, error="request budget spent")
        return evidence
    started = time.monotonic()
    try:
        reader, writer = await session.endpoint.connect(session.timeout)
    except (TimeoutError, OSError) as exc:
        evidence.exchanges["drip"] = Exchange(label, error=connect_error(exc, session.timeout))
        return evidence
    evidence.figures["connected"] = 1
    answer = asyncio.ensure_future(read_response(reader, label, timeout=bounds.slow_head_seconds, started=started))
    try:
        head = session.head("GET").removesuffix(b"\r\n")  # everything but the blank line
        line = 0
        while not answer.done():
            try:
                writer.write(head if line == 0 else b"X-Audit-Drip-%d: 1\r\n" % line)
                await writer.drain()
            except (ConnectionError, OSError):
                break
            line += 1
            await asyncio.wait([answer], timeout=bounds.drip_interval)
        evidence.exchanges["drip"] = await answer
    finally:
        answer.cancel()
        await close(writer)
    evidence.figures["lines"] = line
    return evidence


def judge_slow_head(evidence: Evidence) -> list[Finding]:
    response = evidence.get("drip")
    bound = evidence.figures.get("bound", 0.0)
    if not evidence.figures.get("connected"):
        return [Finding("slow_head", Status.NOT_OBSERVABLE, response.outcome())]
    if response.status is not None or response.closed:
        how = f"{response.status}" if response.status is not None else "connection closed"
        return [Finding("slow_head", Status.PASS, f"cut off after {response.elapsed:.1f} s ({how})")]
    lines = int(evidence.figures.get("lines", 0))
    detail = f"still waiting for the head after {bound:g} s ({lines} lines dripped)"
    return [Finding("slow_head", Status.FAIL, detail)]


SLOW_HEAD = Probe("slow head", ("slow_head",), gather_slow_head, judge_slow_head)
