"""HSTS only over HTTPS, and the merge rules of the security headers guard."""

from __future__ import annotations

import pytest

from guardproxy.config import SecurityHeadersSettings
from guardproxy.context import RequestContext
from guardproxy.guards.security_headers import SecurityHeadersGuard, hsts_value
from guardproxy.routes import RoutePolicy

ROUTE = RoutePolicy("default", 5.0, 60.0, None, 1024)


def guard(**overrides) -> SecurityHeadersGuard:  # type: ignore[no-untyped-def]
    options = {
        "preset": "api",
        "set_headers": {},
        "drop": [],
        "upstream_wins": False,
        "remove": ["server"],
        "hsts": hsts_value(31536000, include_subdomains=True, preload=False),
    }
    return SecurityHeadersGuard(**{**options, **overrides})


def respond(g: SecurityHeadersGuard, scheme: str, headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    context = RequestContext(route=ROUTE, client_host="192.0.2.1", scheme=scheme)
    fields = list(headers)
    g.on_response_start(context, fields)
    result: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        result.setdefault(name, []).append(value)
    return result


def test_hsts_over_https_only() -> None:
    assert respond(guard(), "https", [])[b"strict-transport-security"] == [b"max-age=31536000; includeSubDomains"]
    assert b"strict-transport-security" not in respond(guard(), "http", [])


def test_upstream_hsts_never_leaks_over_http_even_when_the_upstream_wins() -> None:
    upstream = [(b"strict-transport-security", b"max-age=5")]
    assert b"strict-transport-security" not in respond(guard(upstream_wins=True), "http", upstream)
    assert respond(guard(upstream_wins=True), "https", upstream)[b"strict-transport-security"] == [b"max-age=5"]
    assert respond(guard(), "https", upstream)[b"strict-transport-security"] == [b"max-age=31536000; includeSubDomains"]


def test_hsts_can_be_disabled() -> None:
    assert b"strict-transport-security" not in respond(guard(hsts=None), "https", [])


def test_hsts_value_options() -> None:
    assert (
        hsts_value(63072000, include_subdomains=True, preload=True) == b"max-age=63072000; includeSubDomains; preload"
    )
    assert hsts_value(0, include_subdomains=False, preload=False) == b"max-age=0"


def test_end_to_end_headers_and_repeats_survive() -> None:
    upstream = [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-type", b"application/json")]
    fields = respond(guard(), "http", upstream)
    assert fields[b"set-cookie"] == [b"a=1", b"b=2"]
    assert fields[b"content-type"] == [b"application/json"]


def test_set_is_case_insensitive_and_overrides_the_preset() -> None:
    fields = respond(guard(set_headers={"X-Frame-Options": "SAMEORIGIN"}), "http", [])
    assert fields[b"x-frame-options"] == [b"SAMEORIGIN"]


def test_none_preset_sends_only_what_is_set() -> None:
    fields = respond(guard(preset="none", set_headers={"X-Extra": "1"}, hsts=None), "https", [(b"server", b"x")])
    assert fields == {b"x-extra": [b"1"]}


def test_built_from_its_settings_section() -> None:
    settings = SecurityHeadersSettings(drop=["X-Frame-Options"], hsts={"max_age": 60, "preload": True})
    fields = respond(SecurityHeadersGuard.from_settings(settings), "https", [(b"server", b"x")])
    assert b"x-frame-options" not in fields
    assert b"server" not in fields
    assert fields[b"strict-transport-security"] == [b"max-age=60; preload"]
    off = SecurityHeadersSettings(hsts={"enabled": False})
    assert b"strict-transport-security" not in respond(SecurityHeadersGuard.from_settings(off), "https", [])


# Cache-Control defaults: a default, never a policy over the upstream's own.


def cache_headers(
    g: SecurityHeadersGuard, headers: list[tuple[bytes, bytes]], *, status: int = 200, route: str = "default"
) -> list[bytes]:
    context = RequestContext(route=RoutePolicy(route, 5.0, 60.0, None, 1024), client_host="192.0.2.1")
    context.status = status
    fields = list(headers)
    g.on_response_start(context, fields)
    return [value for name, value in fields if name == b"cache-control"]


def from_settings(**section: object) -> SecurityHeadersGuard:
    routes = section.pop("routes", None)
    return SecurityHeadersGuard.from_settings(SecurityHeadersSettings(**section), routes)  # type: ignore[arg-type]


def test_the_upstreams_own_cache_control_is_never_replaced_even_when_guardproxy_wins() -> None:
    upstream = [(b"cache-control", b"public, max-age=60")]
    assert cache_headers(from_settings(), upstream) == [b"public, max-age=60"]
    assert cache_headers(from_settings(upstream_wins=False), upstream) == [b"public, max-age=60"]
    # Repeated field lines stay as they are: nothing added to make a third opinion.
    repeated = [(b"cache-control", b"private"), (b"cache-control", b"max-age=5")]
    assert cache_headers(from_settings(), repeated) == [b"private", b"max-age=5"]


def test_a_304_gets_no_default_its_fields_update_what_a_cache_stored() -> None:
    assert cache_headers(from_settings(), [(b"etag", b'"v1"')], status=304) == []


def test_the_api_preset_adds_no_store_where_the_upstream_said_nothing() -> None:
    assert cache_headers(from_settings(), [(b"content-type", b"application/json")]) == [b"no-store"]


def test_the_web_and_none_presets_add_nothing_unless_told() -> None:
    assert cache_headers(from_settings(preset="web"), []) == []
    assert cache_headers(from_settings(preset="none"), []) == []
    assert cache_headers(from_settings(preset="web", cache_control="no-cache"), []) == [b"no-cache"]


def test_the_default_can_be_turned_off() -> None:
    assert cache_headers(from_settings(cache_control=None), []) == []
    assert cache_headers(from_settings(cache_control=""), []) == []


def test_routes_have_their_own_default_or_none() -> None:
    g = from_settings(routes={"catalog": "public, max-age=300", "raw": None})
    assert cache_headers(g, [], route="catalog") == [b"public, max-age=300"]
    assert cache_headers(g, [], route="raw") == []
    assert cache_headers(g, [], route="default") == [b"no-store"]
    assert cache_headers(g, [(b"cache-control", b"no-cache")], route="catalog") == [b"no-cache"]


@pytest.mark.parametrize("preset", ["api", "web"])
@pytest.mark.parametrize("upstream_wins", [False, True])
def test_an_upstreams_xss_auditor_switch_is_turned_off_and_none_is_added(preset: str, upstream_wins: bool) -> None:
    g = guard(preset=preset, upstream_wins=upstream_wins)
    # A legacy browser's auditor in block mode leaks and breaks pages (OWASP): always 0.
    for value in (b"1; mode=block", b"1", b"1; report=https://r.example", b"0"):
        assert respond(g, "http", [(b"x-xss-protection", value)])[b"x-xss-protection"] == [b"0"]
    # Deprecated, and no current browser runs an auditor: guardproxy never adds one itself.
    assert b"x-xss-protection" not in respond(g, "http", [])


def test_set_can_still_send_x_xss_protection() -> None:
    g = guard(set_headers={"X-XSS-Protection": "0"})
    assert respond(g, "http", [(b"x-xss-protection", b"1")])[b"x-xss-protection"] == [b"0"]
    assert respond(g, "http", [])[b"x-xss-protection"] == [b"0"]
