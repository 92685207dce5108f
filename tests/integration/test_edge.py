"""Trusted proxies, allowed hosts and HTTPS redirects over real sockets. The test client connects
from 127.0.0.1: trusting 127.0.0.1 makes it a proxy in front of guardproxy, trusting anything
else makes it an ordinary (untrusted) client."""

from __future__ import annotations

import httpx
import pytest

from tests.support.processes import echoed_headers
from tests.support.raw import parse_responses, raw_exchange

TRUST_ME = ("--trusted-proxy", "127.0.0.1")
TRUST_OTHERS = ("--trusted-proxy", "10.0.0.0/8")


def test_trusted_proxy_chain_is_extended_and_its_scheme_and_host_believed(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *TRUST_ME)
    response = httpx.get(
        f"{gp.url}/echo",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"},
    )
    headers = echoed_headers(response.json())
    assert headers["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["x-forwarded-host"] == ["api.example.com"]
    assert response.headers["strict-transport-security"].startswith("max-age=31536000")


def test_untrusted_peer_claims_are_replaced_and_get_no_hsts(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *TRUST_OTHERS)
    response = httpx.get(
        f"{gp.url}/echo",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "Forwarded": "for=1.2.3.4"},
    )
    headers = echoed_headers(response.json())
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert "forwarded" not in headers
    assert "strict-transport-security" not in response.headers


# --- allowed hosts -------------------------------------------------------------------------------

ALLOWED = ("--allowed-host", "api.example.com", "--allowed-host", "*.example.org")


@pytest.mark.parametrize(
    "host",
    [
        "api.example.com",
        "API.EXAMPLE.COM",
        "api.example.com:8443",
        "a.example.org",
        "deep.a.example.org",
        "api.example.com.",
    ],
)
def test_listed_hosts_pass(start_proxy, upstream, host: str) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *ALLOWED)
    assert httpx.get(f"{gp.url}/echo", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host",
    ["example.org", "evil.com", "api.example.com.evil.io", "evilexample.org", "xapi.example.com", "127.0.0.1"],
)
def test_unlisted_hosts_get_421(start_proxy, upstream, host: str) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *ALLOWED)
    response = httpx.get(f"{gp.url}/echo", headers={"Host": host})
    assert response.status_code == 421
    assert response.json()["type"] == "urn:guardproxy:problem:misdirected-request"


@pytest.mark.parametrize("host", [b"", b"api.example.com/evil", b"user@api.example.com", b"api example.com", b"a\xffb"])
def test_missing_or_malformed_host_gets_400(start_proxy, upstream, host: bytes) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *ALLOWED)
    head = b"GET /echo HTTP/1.1\r\n" + (b"Host: " + host + b"\r\n" if host else b"") + b"Connection: close\r\n\r\n"
    assert parse_responses(raw_exchange(gp.port, head))[0].status == 400


def test_trusted_forwarded_host_is_what_is_checked(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *ALLOWED, *TRUST_ME)
    ok = httpx.get(f"{gp.url}/echo", headers={"Host": "internal", "X-Forwarded-Host": "api.example.com"})
    assert ok.status_code == 200
    refused = httpx.get(f"{gp.url}/echo", headers={"Host": "api.example.com", "X-Forwarded-Host": "evil.com"})
    assert refused.status_code == 421


# --- https redirects behind a trusted proxy ------------------------------------------------------


def test_http_behind_trusted_proxy_is_redirected_with_path_and_query(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *TRUST_ME, *ALLOWED)
    headers = {"Host": "api.example.com:80", "X-Forwarded-Proto": "http"}
    for method in ("GET", "POST", "DELETE"):
        response = httpx.request(method, f"{gp.url}/a%2Fb/c?x=1&y=%20", headers=headers)
        assert response.status_code == 308
        assert response.headers["location"] == "https://api.example.com/a%2Fb/c?x=1&y=%20"


def test_redirect_never_loops_and_never_guesses(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    trusted = start_proxy(upstream.url, *TRUST_ME, *ALLOWED)
    over_https = httpx.get(f"{trusted.url}/echo", headers={"Host": "api.example.com", "X-Forwarded-Proto": "https"})
    assert over_https.status_code == 200
    unknown_scheme = httpx.get(f"{trusted.url}/echo", headers={"Host": "api.example.com"})
    assert unknown_scheme.status_code == 200
    untrusted = start_proxy(upstream.url, *TRUST_OTHERS, *ALLOWED)
    spoofed = httpx.get(f"{untrusted.url}/echo", headers={"Host": "api.example.com", "X-Forwarded-Proto": "http"})
    assert spoofed.status_code == 200


def test_no_redirect_built_from_an_unvetted_host(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, *TRUST_ME)  # no allowed hosts, no canonical host
    response = httpx.get(f"{gp.url}/echo", headers={"Host": "evil.com", "X-Forwarded-Proto": "http"})
    assert response.status_code == 200
    assert "location" not in response.headers


def test_canonical_host_status_and_exempt_paths(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text(
        "hosts: {canonical: www.example.com}\n"
        "https_redirect: {status: 301, exempt_paths: ['/.well-known/acme-challenge/**']}\n"
    )
    gp = start_proxy(upstream.url, *TRUST_ME, "--config", str(config))
    headers = {"Host": "anything.test", "X-Forwarded-Proto": "http"}
    get = httpx.get(f"{gp.url}/x", headers=headers)
    assert (get.status_code, get.headers["location"]) == (301, "https://www.example.com/x")
    post = httpx.post(f"{gp.url}/x", headers=headers)
    assert post.status_code == 307  # 301 would turn a POST into a GET in browsers
    challenge = httpx.get(f"{gp.url}/.well-known/acme-challenge/token", headers=headers)
    assert challenge.status_code == 404  # forwarded to the upstream, which has no such path
