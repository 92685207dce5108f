"""The catalogue of checks: which checklist item each observes, how much it weighs, and the
guardproxy setting that fixes it.

Every flag and setting named here is a real one; tests/unit/audit/test_checks.py resolves each
against the CLI's FLAGS table and the Settings model, so a renamed setting breaks a test, not a
report. A fix of None means guardproxy cannot fix it (the API itself must change).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"
    FAIL = "fail"
    NOT_OBSERVABLE = "not observable"


@dataclass(frozen=True)
class Finding:
    """A probe's verdict on one check, with the evidence it rests on."""

    check: str
    status: Status
    evidence: str


@dataclass(frozen=True)
class Fix:
    flags: tuple[str, ...] = ()  # command-line flags of `guardproxy run`
    settings: tuple[str, ...] = ()  # dotted config keys; `[]` marks a list of sections
    note: str = ""

    def describe(self) -> str:
        parts = [" ".join(self.flags)] if self.flags else []
        if self.settings:
            parts.append(", ".join(f"`{name}`" for name in self.settings))
        text = " / ".join(parts)
        return f"{text} ({self.note})" if text and self.note else text or self.note


@dataclass(frozen=True)
class Check:
    id: str
    item: int | None  # the number in the production checklist; None for an extra check
    title: str
    weight: int  # 3: a hole someone can use today; 2: a standard control; 1: hygiene
    fix: Fix | None


_CORS_FIX = Fix(("--cors-origin ORIGIN",), ("cors.origins",), "guardproxy then owns CORS and drops the upstream's")
_UPSTREAM_ERRORS = "the upstream's own error bodies pass through unchanged: fix them in the API"

CHECKS: tuple[Check, ...] = (
    Check("cors.foreign_origin", 1, "CORS: a foreign origin is not granted", 3, _CORS_FIX),
    Check("cors.null_origin", 1, "CORS: the `null` origin is not granted", 2, _CORS_FIX),
    Check("cors.preflight", 1, "CORS: a foreign preflight is refused", 2, _CORS_FIX),
    Check(
        "request_id.present",
        2,
        "a unique request ID on every response",
        2,
        Fix(note="guardproxy's default: an X-Request-ID on every response"),
    ),
    Check(
        "request_id.echoed",
        2,
        "a client's X-Request-ID is echoed",
        1,
        Fix(settings=("request_id.trust_incoming",), note="on by default"),
    ),
    Check(
        "rate_limit",
        8,
        "a rate limit is observable (429, Retry-After, RateLimit)",
        2,
        Fix(("--rate-limit N/PERIOD",), ("rate_limit.per_client_ip", "rate_limit.rules")),
    ),
    Check("errors.not_found.format", 10, "a 404 is an RFC 9457 problem", 1, Fix(note=_UPSTREAM_ERRORS)),
    Check(
        "errors.malformed.format",
        10,
        "a malformed request gets an RFC 9457 problem",
        1,
        Fix(note="on by default: guardproxy refuses malformed requests itself"),
    ),
    Check(
        "errors.request_id",
        11,
        "error responses carry the request ID",
        1,
        Fix(note="on by default: X-Request-ID on every response, request_id in problems"),
    ),
    Check("errors.not_found.leaks", 12, "no stack trace, path or internal address in a 404", 3, None),
    Check("errors.server_error.leaks", 12, "no stack trace, path or internal address in a 5xx", 3, None),
    Check(
        "errors.malformed.leaks",
        12,
        "no stack trace, path or internal address for a malformed request",
        3,
        Fix(note="guardproxy's default: it answers malformed requests itself, with problems"),
    ),
    Check(
        "headers.security",
        13,
        "security headers (the api preset as reference)",
        2,
        Fix(settings=("security_headers.preset",), note="api by default"),
    ),
    Check(
        "https.redirect",
        14,
        "plain HTTP redirected to HTTPS, method-preserving",
        1,
        Fix(
            ("--tls-cert FILE", "--tls-key FILE", "--redirect-listen HOST:PORT"),
            ("https_redirect.status",),
            "or behind a TLS proxy: --trusted-proxy and https_redirect.enabled",
        ),
    ),
    Check(
        "https.hsts",
        15,
        "HSTS, and only over HTTPS",
        2,
        Fix(settings=("security_headers.hsts.max_age",), note="on by default, never over plain HTTP"),
    ),
    Check(
        "headers.banners",
        16,
        "no Server / X-Powered-By banners",
        1,
        Fix(settings=("security_headers.remove",), note="on by default"),
    ),
    Check(
        "hosts.foreign",
        17,
        "a foreign Host is refused, never reflected",
        3,
        Fix(("--allowed-host HOST",), ("hosts.allowed",)),
    ),
    Check(
        "client_ip.spoofed",
        18,
        "a spoofed X-Forwarded-For is not believed",
        2,
        Fix(("--trusted-proxy CIDR",), ("trusted_proxies.cidrs",), "on by default: believed from those peers only"),
    ),
    Check(
        "body_limit",
        19,
        "an oversized declared body is refused before it is sent",
        2,
        Fix(settings=("body_limit.max_bytes", "routes[].body_limit.max_bytes"), note="1 MiB by default"),
    ),
    Check(
        "limits.head",
        20,
        "URI and header size limits (414/431)",
        1,
        Fix(settings=("server.max_uri_bytes", "server.max_request_head_bytes"), note="on by default"),
    ),
    Check(
        "slow_head",
        21,
        "a slowly dripped request head is cut off",
        2,
        Fix(settings=("server.request_head_timeout",), note="10 s by default"),
    ),
    Check(
        "compression",
        25,
        "compressible responses compressed, with Vary",
        1,
        Fix(settings=("compression.enabled", "compression.min_size"), note="on by default"),
    ),
    Check(
        "cache_control",
        41,
        "Cache-Control on an authenticated API response",
        1,
        Fix(settings=("security_headers.cache_control", "routes[].cache_control"), note="no-store by default"),
    ),
    Check(
        "paths.traversal",
        46,
        "encoded dot-segments refused, never resolved",
        2,
        Fix(settings=("paths.refuse_traversal",), note="on by default"),
    ),
    Check(
        "methods.trace",
        None,
        "TRACE is refused (cross-site tracing)",
        2,
        Fix(settings=("methods.refused",), note="TRACE and TRACK by default"),
    ),
)

BY_ID = {check.id: check for check in CHECKS}
