"""Each probe's decision on recorded evidence (audit/probes/): no network, one case per verdict."""

from __future__ import annotations

import orjson
import pytest

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.evidence import Exchange
from guardproxy.audit.probes import cors, errors, headers, identity, limits
from guardproxy.audit.probes.base import FOREIGN_HOST, FOREIGN_ORIGIN, SPOOFED_ADDRESS, Evidence
from guardproxy.audit.session import Target
from guardproxy.guards.security_headers import PRESETS

HTTP = Target.parse("http://127.0.0.1:8000/")
HTTPS = Target.parse("https://api.example.test/")
TIMED_OUT = Exchange("GET /", error="connected, but no answer within 5 s")


def answer(status: int = 200, *fields: tuple[str, str], body: bytes = b"") -> Exchange:
    return Exchange("GET /", status=status, headers=tuple((name.lower(), value) for name, value in fields), body=body)


def evidence(target: Target = HTTP, **exchanges: Exchange) -> Evidence:
    return Evidence(target, dict(exchanges))


def only(findings: list[Finding], check: str) -> Finding:
    (finding,) = [finding for finding in findings if finding.check == check]
    return finding


# Security headers and banners (items 13, 16)


def test_the_api_preset_passes() -> None:
    finding = headers.judge_security_headers(answer(200, *PRESETS["api"].items()))
    assert finding.status is Status.PASS


def test_missing_nosniff_or_framing_protection_fails() -> None:
    fields = {name: value for name, value in PRESETS["api"].items() if name != "x-content-type-options"}
    assert headers.judge_security_headers(answer(200, *fields.items())).status is Status.FAIL
    finding = headers.judge_security_headers(answer(200))
    assert finding.status is Status.FAIL
    assert "missing content-security-policy" in finding.evidence


def test_a_weaker_value_than_the_preset_is_a_warning() -> None:
    fields = {**PRESETS["api"], "referrer-policy": "unsafe-url"}
    finding = headers.judge_security_headers(answer(200, *fields.items()))
    assert finding.status is Status.WARN
    assert "referrer-policy: unsafe-url" in finding.evidence


def test_versioned_banners_fail_a_bare_server_name_warns() -> None:
    assert headers.judge_banners(answer(200, ("X-Powered-By", "Express"))).status is Status.FAIL
    assert headers.judge_banners(answer(200, ("Server", "nginx/1.22.1"))).status is Status.FAIL
    assert headers.judge_banners(answer(200, ("Server", "uvicorn"))).status is Status.WARN
    assert headers.judge_banners(answer(200, ("Content-Type", "application/json"))).status is Status.PASS


# HTTPS and HSTS (items 14, 15)


def test_hsts_over_plain_http_fails_and_its_absence_passes() -> None:
    sent = evidence(main=answer(200, ("Strict-Transport-Security", "max-age=31536000")))
    assert headers.judge_hsts(sent).status is Status.FAIL
    assert headers.judge_hsts(evidence(main=answer())).status is Status.PASS


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (None, Status.FAIL),
        ("max-age=300", Status.WARN),
        ('max-age="31536000"; includeSubDomains', Status.PASS),
        ("max-age=15552000", Status.PASS),
    ],
)
def test_hsts_over_https(value: str | None, status: Status) -> None:
    fields = [("Strict-Transport-Security", value)] if value else []
    assert headers.judge_hsts(evidence(HTTPS, main=answer(200, *fields))).status is status


@pytest.mark.parametrize(
    ("status", "location", "verdict"),
    [
        (308, "https://api.example.test/", Status.PASS),
        (307, "https://api.example.test/", Status.PASS),
        (301, "https://api.example.test/", Status.WARN),
        (302, "http://elsewhere/", Status.WARN),
        (200, None, Status.WARN),
    ],
)
def test_https_redirect_of_a_plain_url(status: int, location: str | None, verdict: Status) -> None:
    fields = [("Location", location)] if location else []
    assert headers.judge_https_redirect(evidence(main=answer(status, *fields))).status is verdict


def test_https_redirect_of_an_https_url_looks_at_its_plain_twin() -> None:
    assert headers.judge_https_redirect(evidence(HTTPS, main=answer())).status is Status.NOT_OBSERVABLE
    twin = evidence(HTTPS, main=answer(), plain=answer(308, ("Location", "https://api.example.test/")))
    assert headers.judge_https_redirect(twin).status is Status.PASS


def test_an_unanswered_main_request_observes_nothing() -> None:
    findings = headers.judge_response(evidence(main=TIMED_OUT))
    assert {finding.status for finding in findings} == {Status.NOT_OBSERVABLE}
    assert len(findings) == len(headers.RESPONSE.checks)


# Compression (25) and Cache-Control (41)


def test_compression_verdicts() -> None:
    big = b"x" * 2000
    json_type = ("Content-Type", "application/json")
    compressed = answer(200, json_type, ("Content-Encoding", "br"), ("Vary", "Accept-Encoding"), body=b"\x0b")
    assert only(headers.judge_compression(evidence(compressed=compressed)), "compression").status is Status.PASS
    no_vary = answer(200, json_type, ("Content-Encoding", "gzip"))
    assert headers.judge_compression(evidence(compressed=no_vary))[0].status is Status.WARN
    plain = answer(200, json_type, body=big)
    assert headers.judge_compression(evidence(compressed=plain))[0].status is Status.FAIL
    small = answer(200, json_type, body=b"{}")
    assert headers.judge_compression(evidence(compressed=small))[0].status is Status.NOT_OBSERVABLE
    image = answer(200, ("Content-Type", "image/png"), body=big)
    assert headers.judge_compression(evidence(compressed=image))[0].status is Status.NOT_OBSERVABLE


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("no-store", Status.PASS),
        ("private, max-age=60", Status.PASS),
        ("public, max-age=600", Status.FAIL),
        ("max-age=600", Status.FAIL),
        ("must-revalidate", Status.WARN),
        (None, Status.WARN),
    ],
)
def test_cache_control_on_an_authenticated_response(value: str | None, status: Status) -> None:
    fields = [("Cache-Control", value)] if value else []
    assert headers.judge_cache(evidence(authenticated=answer(200, *fields)))[0].status is status


# CORS (1)


def test_a_reflected_origin_with_credentials_fails_and_names_the_missing_vary() -> None:
    response = answer(
        200, ("Access-Control-Allow-Origin", FOREIGN_ORIGIN), ("Access-Control-Allow-Credentials", "true")
    )
    finding = cors.judge_origin("cors.foreign_origin", response, FOREIGN_ORIGIN)
    assert finding.status is Status.FAIL
    assert "with Access-Control-Allow-Credentials: true, no Vary: Origin" in finding.evidence


def test_a_wildcard_alone_is_a_warning_with_credentials_a_failure() -> None:
    star = answer(200, ("Access-Control-Allow-Origin", "*"))
    assert cors.judge_origin("cors.foreign_origin", star, FOREIGN_ORIGIN).status is Status.WARN
    star_credentials = answer(200, ("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Credentials", "true"))
    assert cors.judge_origin("cors.foreign_origin", star_credentials, FOREIGN_ORIGIN).status is Status.FAIL


def test_no_grant_or_another_origin_passes() -> None:
    assert cors.judge_origin("cors.null_origin", answer(200), "null").status is Status.PASS
    other = answer(200, ("Access-Control-Allow-Origin", "https://app.example.test"))
    assert cors.judge_origin("cors.foreign_origin", other, FOREIGN_ORIGIN).status is Status.PASS
    null = answer(200, ("Access-Control-Allow-Origin", "null"), ("Vary", "Origin"))
    assert cors.judge_origin("cors.null_origin", null, "null").status is Status.FAIL


def test_preflight_verdicts() -> None:
    granted = answer(204, ("Access-Control-Allow-Origin", FOREIGN_ORIGIN), ("Access-Control-Allow-Methods", "PUT"))
    assert cors.judge_preflight(granted).status is Status.FAIL
    assert cors.judge_preflight(answer(403)).status is Status.PASS
    assert cors.judge_preflight(answer(405)).status is Status.PASS
    assert cors.judge_preflight(TIMED_OUT).status is Status.NOT_OBSERVABLE


# Request IDs (2), Host (17), client address (18)


def test_request_id_present_unique_and_echoed() -> None:
    recorded = evidence(
        first=answer(200, ("X-Request-ID", "a1")),
        second=answer(200, ("X-Request-ID", "b2")),
        sent=answer(200, ("X-Request-ID", "audit-1")),
    )
    recorded.sent["request_id"] = "audit-1"
    findings = identity.judge_request_id(recorded)
    assert [finding.status for finding in findings] == [Status.PASS, Status.PASS]


def test_request_id_missing_repeated_or_replaced() -> None:
    recorded = evidence(first=answer(), second=answer(), sent=answer())
    recorded.sent["request_id"] = "audit-1"
    assert [f.status for f in identity.judge_request_id(recorded)] == [Status.FAIL, Status.FAIL]
    same = evidence(
        first=answer(200, ("X-Correlation-ID", "same")),
        second=answer(200, ("X-Correlation-ID", "same")),
        sent=answer(200, ("X-Correlation-ID", "its-own")),
    )
    same.sent["request_id"] = "audit-1"
    present, echoed = identity.judge_request_id(same)
    assert present.status is Status.FAIL
    assert "same" in present.evidence
    assert echoed.status is Status.WARN


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (answer(302, ("Location", f"http://{FOREIGN_HOST}/login")), Status.FAIL),
        (answer(200, ("Link", f"<http://{FOREIGN_HOST}/next>; rel=next")), Status.FAIL),
        (answer(200, body=f'{{"self": "http://{FOREIGN_HOST}/"}}'.encode()), Status.FAIL),
        (answer(421), Status.PASS),
        (answer(400), Status.PASS),
        (answer(200, body=b"{}"), Status.WARN),
        (TIMED_OUT, Status.NOT_OBSERVABLE),
    ],
)
def test_foreign_host(response: Exchange, status: Status) -> None:
    assert identity.judge_host(evidence(foreign=response))[0].status is status


def test_spoofed_client_address() -> None:
    def judged(response: Exchange) -> Status:
        recorded = evidence(spoofed=response)
        recorded.sent["marker"] = "audit-m"
        return identity.judge_client_ip(recorded)[0].status

    assert judged(answer(200, body=f'{{"client": "{SPOOFED_ADDRESS}"}}'.encode())) is Status.FAIL
    assert judged(answer(200, ("X-Client", SPOOFED_ADDRESS))) is Status.FAIL
    assert judged(answer(200, body=b'{"x-audit-marker": "audit-m", "client": "127.0.0.1"}')) is Status.PASS
    assert judged(answer(200, body=b"{}")) is Status.NOT_OBSERVABLE


# Errors (10-12) and TRACE


PROBLEM = orjson.dumps({"type": "urn:x", "title": "Not Found", "status": 404, "request_id": "r1"})


def test_error_format() -> None:
    problem = answer(404, ("Content-Type", "application/problem+json"), body=PROBLEM)
    assert errors.judge_format("errors.not_found.format", problem).status is Status.PASS
    json_error = answer(404, ("Content-Type", "application/json"), body=b'{"error": "not found"}')
    assert errors.judge_format("errors.not_found.format", json_error).status is Status.WARN
    html = answer(404, ("Content-Type", "text/html"), body=b"<h1>404</h1>")
    assert errors.judge_format("errors.not_found.format", html).status is Status.FAIL
    lying = answer(404, ("Content-Type", "application/problem+json"), body=b"<html>")
    assert errors.judge_format("errors.not_found.format", lying).status is Status.FAIL


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ('Traceback (most recent call last):\n  File "/srv/app.py", line 3', "a Python traceback"),
        ("at com.example.Api.handle(Api.java:42)", "a Java stack trace"),
        ("at Object.<anonymous> (/app/server.js:10:5)", "a Node stack trace"),
        ("Fatal error: Uncaught Error in /var/www/index.php on line 7", "a PHP error"),
        ("cannot open /home/deploy/app/settings.rb", "a source file path"),
        ("upstream 10.0.3.7 refused", "an internal address"),
        ("db at 172.20.1.4", "an internal address"),
        ("proxy to 127.0.0.1:8000 failed", "an internal address"),
    ],
)
def test_leaks_are_found(body: str, kind: str) -> None:
    leak = errors.find_leak(body)
    assert leak is not None
    assert leak.startswith(kind)


@pytest.mark.parametrize("body", ['{"title": "Not Found", "status": 404}', "client 127.0.0.1 said hello", "v1.2.3.4"])
def test_clean_errors_are_not_leaks(body: str) -> None:
    assert errors.find_leak(body) is None


def test_request_id_in_errors_header_or_body() -> None:
    with_header = answer(404, ("X-Request-ID", "r1"))
    in_body = answer(400, ("Content-Type", "application/problem+json"), body=PROBLEM)
    assert errors.judge_request_id({"404": with_header, "malformed": in_body}).status is Status.PASS
    finding = errors.judge_request_id({"404": answer(404), "malformed": in_body})
    assert finding.status is Status.FAIL
    assert "404 (404)" in finding.evidence
    assert errors.judge_request_id({"404": TIMED_OUT}).status is Status.NOT_OBSERVABLE


def test_no_5xx_provoked_is_not_observable() -> None:
    recorded = evidence(not_found=answer(404), server_error=answer(404), malformed=answer(400))
    assert only(errors.judge(recorded), "errors.server_error.leaks").status is Status.NOT_OBSERVABLE
    crashed = evidence(not_found=answer(404), server_error=answer(500, body=b"Traceback (most recent call last)"))
    assert only(errors.judge(crashed), "errors.server_error.leaks").status is Status.FAIL


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (answer(400), Status.PASS),
        (answer(200), Status.FAIL),
        (answer(404), Status.WARN),
        (TIMED_OUT, Status.NOT_OBSERVABLE),
    ],
)
def test_traversal_verdicts(response: Exchange, status: Status) -> None:
    assert errors.judge_traversal(evidence(traversal=response))[0].status is status


def test_trace_verdicts() -> None:
    def judged(response: Exchange) -> Status:
        recorded = evidence(trace=response)
        recorded.sent["marker"] = "audit-m"
        return errors.judge_trace(recorded)[0].status

    assert judged(answer(200, body=b"TRACE / HTTP/1.1\r\nX-Audit-Marker: audit-m")) is Status.FAIL
    assert judged(answer(200, body=b"ok")) is Status.WARN
    assert judged(answer(405)) is Status.PASS
    assert judged(TIMED_OUT) is Status.NOT_OBSERVABLE


# Limits (8, 19, 20, 21)


def test_rate_limit_verdicts() -> None:
    def judged(signal: Exchange | None, sent: int = 50, failed: int = 0) -> Finding:
        recorded = evidence(first=answer())
        if signal is not None:
            recorded.exchanges["signal"] = signal
        recorded.figures.update(sent=sent, failed=failed, seconds=0.5)
        recorded.sent["statuses"] = "200"
        return limits.judge_rate_limit(recorded)[0]

    assert judged(answer(200, ("RateLimit-Policy", '"per-ip";q=100;w=60')), sent=1).status is Status.PASS
    assert judged(answer(429, ("Retry-After", "3")), sent=20).status is Status.PASS
    assert judged(answer(429), sent=20).status is Status.WARN
    finding = judged(None)
    assert finding.status is Status.FAIL
    assert "50 requests" in finding.evidence
    assert judged(None, failed=5).status is Status.WARN
    assert judged(None, failed=50).status is Status.NOT_OBSERVABLE


def test_body_limit_verdicts() -> None:
    def judged(response: Exchange, connected: bool = True) -> Status:
        recorded = evidence(oversized=response)
        recorded.figures.update(declared=100 * 1024 * 1024, connected=int(connected))
        return limits.judge_body_limit(recorded)[0].status

    assert judged(answer(413)) is Status.PASS
    assert judged(answer(400)) is Status.WARN
    assert judged(answer(200)) is Status.FAIL
    assert judged(Exchange("x", error="no complete answer within 3 s")) is Status.FAIL
    assert judged(Exchange("x", error="closed the connection without an answer", closed=True)) is Status.WARN
    assert judged(Exchange("x", error="connection refused"), connected=False) is Status.NOT_OBSERVABLE


def test_head_limit_verdicts() -> None:
    def judged(uri: Exchange, header: Exchange) -> Status:
        return limits.judge_head_limits(evidence(uri=uri, header=header))[0].status

    assert judged(answer(414), answer(431)) is Status.PASS
    assert judged(answer(414), Exchange("x", error="closed", closed=True)) is Status.PASS
    assert judged(answer(414), answer(200)) is Status.WARN
    assert judged(answer(200), answer(404)) is Status.FAIL
    assert judged(answer(414), TIMED_OUT) is Status.NOT_OBSERVABLE


def test_slow_head_verdicts() -> None:
    def judged(response: Exchange, connected: bool = True) -> Finding:
        recorded = evidence(drip=response)
        recorded.figures.update(bound=12.0, lines=12, connected=int(connected))
        return limits.judge_slow_head(recorded)[0]

    cut = judged(Exchange("x", status=408, elapsed=10.02))
    assert cut.status is Status.PASS
    assert "10.0 s (408)" in cut.evidence
    assert judged(Exchange("x", error="closed", closed=True, elapsed=5)).status is Status.PASS
    assert judged(Exchange("x", error="no complete answer within 12 s")).status is Status.FAIL
    assert judged(Exchange("x", error="connection refused"), connected=False).status is Status.NOT_OBSERVABLE
