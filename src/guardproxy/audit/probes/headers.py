"""Response headers of the URL itself: security headers (13), banners (16), HTTPS redirect (14),
HSTS (15), compression and Vary (25), Cache-Control on an authenticated response (41)."""

from __future__ import annotations

import re

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.evidence import Exchange, quote
from guardproxy.audit.probes.base import Evidence, Probe
from guardproxy.audit.session import Session
from guardproxy.config import SecurityHeadersSettings
from guardproxy.guards.security_headers import PRESETS

API_PRESET = PRESETS["api"]
BANNERS = tuple(dict.fromkeys(("server", *SecurityHeadersSettings().remove)))
# RFC 6797 §11.2 leaves the value to the site; Observatory and the preload list want six months.
MIN_HSTS_MAX_AGE = 15_552_000
_VERSION = re.compile(r"\d+\.\d+")
_COMPRESSIBLE = re.compile(r"text/.*|application/(.*\+)?(json|xml|javascript|x-ndjson)|image/svg\+xml")
MIN_COMPRESSIBLE_BYTES = 1024


async def gather_response(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    evidence.exchanges["main"] = await session.request("GET")
    target = session.target
    if target.scheme == "https" and target.port == 443:
        # The plain-HTTP twin of an HTTPS URL on the default ports: does it redirect?
        plain = f"http://{target.host}{target.target}"
        evidence.exchanges["plain"] = await session.request("GET", label=f"GET {plain}", absolute=plain)
    return evidence


def judge_security_headers(response: Exchange) -> Finding:
    missing, weak = [], []
    for name, reference in API_PRESET.items():
        value = response.header(name)
        if value is None:
            missing.append(name)
        elif value.strip().lower() != reference.lower():
            weak.append(f"{name}: {quote(value, 40)}")
    framing = response.header("x-frame-options") or "frame-ancestors" in (
        response.header("content-security-policy") or ""
    )
    sniffing = (response.header("x-content-type-options") or "").strip().lower() == "nosniff"
    if not missing and not weak:
        return Finding("headers.security", Status.PASS, "all of the api preset: " + ", ".join(API_PRESET))
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if weak:
        parts.append("differs from the api preset: " + "; ".join(weak))
    status = Status.FAIL if not (framing and sniffing) else Status.WARN
    return Finding("headers.security", status, "; ".join(parts))


def judge_banners(response: Exchange) -> Finding:
    seen = [(name, value) for name in BANNERS for value in response.values(name)]
    if not seen:
        return Finding("headers.banners", Status.PASS, "no " + ", ".join(name.title() for name in BANNERS[:2]))
    evidence = ", ".join(f"{name.title()}: {quote(value, 40)}" for name, value in seen)
    versioned = any(name != "server" or _VERSION.search(value) for name, value in seen)
    return Finding("headers.banners", Status.FAIL if versioned else Status.WARN, evidence)


def judge_https_redirect(evidence: Evidence) -> Finding:
    if evidence.target.scheme == "https":
        plain = evidence.exchanges.get("plain")
        if plain is None:
            return Finding("https.redirect", Status.NOT_OBSERVABLE, "audit the http:// URL to see its redirect")
        response = plain
    else:
        response = evidence.get("main")
    if not response.answered:
        return Finding("https.redirect", Status.NOT_OBSERVABLE, f"plain HTTP: {response.outcome()}")
    location = response.header("location") or ""
    if 300 <= (response.status or 0) < 400 and location.lower().startswith("https://"):
        if response.status in (307, 308):
            return Finding("https.redirect", Status.PASS, f"{response.status} to {quote(location, 50)}")
        # RFC 9110 §15.4.2/§15.4.3: user agents may turn a POST into a GET on 301/302.
        return Finding(
            "https.redirect", Status.WARN, f"{response.status} (not method-preserving) to {quote(location, 50)}"
        )
    return Finding(
        "https.redirect",
        Status.WARN,
        f"answered {response.status} over plain HTTP, no redirect (right only for an internal hop behind TLS)",
    )


def judge_hsts(evidence: Evidence) -> Finding:
    response = evidence.get("main")
    value = response.header("strict-transport-security")
    if evidence.target.scheme == "http":
        if value is not None:
            # RFC 6797 §7.2: a server must not send it over non-secure transport.
            return Finding("https.hsts", Status.FAIL, f"sent over plain HTTP: {quote(value, 50)}")
        return Finding("https.hsts", Status.PASS, "not sent over plain HTTP (audit the https:// URL for the rest)")
    if value is None:
        return Finding("https.hsts", Status.FAIL, "no Strict-Transport-Security over HTTPS")
    match = re.search(r"max-age\s*=\s*\"?(\d+)", value, re.IGNORECASE)
    max_age = int(match.group(1)) if match else 0
    if max_age < MIN_HSTS_MAX_AGE:
        return Finding("https.hsts", Status.WARN, f"max-age below 180 days: {quote(value, 50)}")
    return Finding("https.hsts", Status.PASS, quote(value, 60))


def judge_response(evidence: Evidence) -> list[Finding]:
    response = evidence.get("main")
    if not response.answered:
        reason = f"GET: {response.outcome()}"
        return [
            Finding(check, Status.NOT_OBSERVABLE, reason)
            for check in ("headers.security", "headers.banners", "https.redirect", "https.hsts")
        ]
    return [
        judge_security_headers(response),
        judge_banners(response),
        judge_https_redirect(evidence),
        judge_hsts(evidence),
    ]


RESPONSE = Probe(
    "response headers",
    ("headers.security", "headers.banners", "https.redirect", "https.hsts"),
    gather_response,
    judge_response,
)


async def gather_compression(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    evidence.exchanges["compressed"] = await session.request(
        "GET", headers=[("Accept-Encoding", "gzip, br")], label="GET with Accept-Encoding: gzip, br"
    )
    return evidence


def judge_compression(evidence: Evidence) -> list[Finding]:
    response = evidence.get("compressed")
    if not response.answered:
        return [Finding("compression", Status.NOT_OBSERVABLE, response.outcome())]
    coding = (response.header("content-encoding") or "").strip().lower()
    vary = response.tokens("vary")
    if coding and coding != "identity":
        if "accept-encoding" in vary or "*" in vary:
            return [Finding("compression", Status.PASS, f"Content-Encoding: {coding}, Vary: {response.header('vary')}")]
        return [Finding("compression", Status.WARN, f"Content-Encoding: {coding} without Vary: Accept-Encoding")]
    size = len(response.body)
    if _COMPRESSIBLE.fullmatch(response.media_type) and size >= MIN_COMPRESSIBLE_BYTES:
        return [
            Finding(
                "compression",
                Status.FAIL,
                f"{size} bytes of {response.media_type} sent uncompressed to a client accepting gzip, br",
            )
        ]
    return [
        Finding(
            "compression",
            Status.NOT_OBSERVABLE,
            f"{size} bytes of {response.media_type or 'no type'}: too small or not compressible",
        )
    ]


COMPRESSION = Probe("compression", ("compression",), gather_compression, judge_compression)


async def gather_cache(session: Session) -> Evidence:
    evidence = Evidence(session.target)
    own = any(name.lower() == "authorization" for name, _ in session.extra_headers)
    headers = [] if own else [("Authorization", "Bearer audit-probe-not-a-real-token")]
    evidence.exchanges["authenticated"] = await session.request("GET", headers=headers, label="GET with Authorization")
    return evidence


def judge_cache(evidence: Evidence) -> list[Finding]:
    response = evidence.get("authenticated")
    if not response.answered:
        return [Finding("cache_control", Status.NOT_OBSERVABLE, response.outcome())]
    value = response.header("cache-control")
    if value is None:
        # RFC 9111 §4.2.2: without it, caches may choose a heuristic lifetime of their own.
        return [Finding("cache_control", Status.WARN, f"{response.status} without Cache-Control: caches may guess")]
    tokens = response.tokens("cache-control")
    if tokens & {"no-store", "private", "no-cache"}:
        return [Finding("cache_control", Status.PASS, f"Cache-Control: {quote(value, 50)}")]
    if tokens & {"public", "max-age", "s-maxage"}:
        return [Finding("cache_control", Status.FAIL, f"an authenticated response is cacheable: {quote(value, 50)}")]
    return [Finding("cache_control", Status.WARN, f"Cache-Control: {quote(value, 50)}")]


CACHE = Probe("cache control", ("cache_control",), gather_cache, judge_cache)
