"""Security headers on every response guardproxy sends, banners gone, HSTS never over HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.support.processes import Guardproxy, free_port
from tests.support.raw import parse_responses, raw_exchange, request_bytes

API_PRESET = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}


def assert_api_preset(headers: httpx.Headers) -> None:
    for name, value in API_PRESET.items():
        assert headers.get_list(name) == [value], name
    assert "camera=()" in headers["permissions-policy"]
    assert "strict-transport-security" not in headers  # plain HTTP
    for banner in ("server", "x-powered-by"):
        assert banner not in headers


@pytest.mark.parametrize(
    "target",
    [
        "/echo",
        "/status/404",
        "/status/500",
        "/payload?size=10&h=x-powered-by:PHP/5.4&h=x-aspnet-version:4.0",
        "/payload?size=10&h=content-security-policy:default-src%20*&h=x-frame-options:ALLOWALL",
        "/payload?size=10&h=strict-transport-security:max-age=99",
    ],
)
def test_upstream_responses_get_the_api_preset(proxy: Guardproxy, target: str) -> None:
    assert_api_preset(httpx.get(f"{proxy.url}{target}").headers)


def test_guardproxy_problems_get_the_preset_too(start_proxy) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(f"http://127.0.0.1:{free_port()}")
    response = httpx.get(f"{gp.url}/x")
    assert response.status_code == 502
    assert_api_preset(response.headers)


def test_guard_answers_get_the_preset(proxy: Guardproxy) -> None:
    response = httpx.post(f"{proxy.url}/echo", content=b"x" * (2 * 1024 * 1024))
    assert response.status_code == 413
    assert_api_preset(response.headers)


def test_malformed_request_refusals_get_the_preset(proxy: Guardproxy) -> None:
    data = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    response = parse_responses(data)[0]
    assert response.status == 400
    for name, value in API_PRESET.items():
        assert response.header(name.encode()) == value.encode(), name


def test_headers_are_not_duplicated(proxy: Guardproxy) -> None:
    response = parse_responses(
        raw_exchange(
            proxy.port, request_bytes("GET", "/payload?size=10&h=x-frame-options:DENY", [("Connection", "close")])
        )
    )[0]
    names = [name for name, _ in response.headers]
    assert len(names) == len(set(names) - {b"set-cookie"} | {n for n in names if n == b"set-cookie"})


def test_configuration_sets_drops_and_can_let_the_upstream_win(start_proxy, upstream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "guardproxy.yaml"
    config.write_text(
        "security_headers:\n"
        "  preset: web\n"
        "  set: {X-Frame-Options: DENY, X-Custom-Policy: strict}\n"
        "  drop: [Cross-Origin-Opener-Policy]\n"
        "  upstream_wins: true\n"
        "  remove: [x-request-cost]\n"
    )
    gp = start_proxy(upstream.url, "--config", str(config))
    headers = httpx.get(f"{gp.url}/payload?size=10&h=referrer-policy:origin&h=x-request-cost:12&h=server:keep").headers
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-custom-policy"] == "strict"
    assert "cross-origin-opener-policy" not in headers
    assert headers.get_list("referrer-policy") == ["origin"]  # the upstream's own value wins
    assert "x-request-cost" not in headers
    assert "keep" in headers["server"]  # no longer on the remove list


def test_security_headers_can_be_turned_off(start_proxy, upstream) -> None:  # type: ignore[no-untyped-def]
    gp = start_proxy(upstream.url, env={"GUARDPROXY_SECURITY_HEADERS__ENABLED": "false"})
    headers = httpx.get(f"{gp.url}/echo").headers
    assert "content-security-policy" not in headers
    assert headers["server"] == "uvicorn"


def test_bad_header_configuration_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from guardproxy.config import ConfigError, load_settings  # noqa: PLC0415

    config = tmp_path / "guardproxy.yaml"
    config.write_text("upstream: {url: 'http://x:1'}\nsecurity_headers:\n  set: {'Bad Name': x}\n  preset: strict\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, config)
    assert any(line.startswith("security_headers.set") for line in error.value.problems)
    assert any(line.startswith("security_headers.preset") for line in error.value.problems)
