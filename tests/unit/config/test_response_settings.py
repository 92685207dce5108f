"""Settings of the response-side rules: upstream internal origins and redirect rewriting, the
Cache-Control default, and route deprecation. Every bad value fails the start with its name."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pytest

from guardproxy.config import ConfigError, load_settings

UPSTREAM = {"url": "http://127.0.0.1:8000"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GUARDPROXY_"):
            monkeypatch.delenv(name)


def problems_of(flags: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags)
    return caught.value.problems


def route(**fields: Any) -> dict[str, Any]:
    return {"upstream": UPSTREAM, "routes": [{"name": "v1", "path": "/v1/**", **fields}]}


@pytest.mark.parametrize(
    ("origin", "why"),
    [
        ("http://10.0.0.5:8000/login", "must be an origin only"),
        ("ftp://10.0.0.5", "must be an http:// or https:// URL"),
        ("http://user:pw@10.0.0.5", "must not contain credentials"),
        ("http://10.0.0.5:99999", "has an invalid port"),
        ("10.0.0.5:8000", "must be an http:// or https:// URL"),
    ],
)
def test_bad_internal_origins_are_named(origin: str, why: str) -> None:
    [problem] = problems_of({"upstream": {**UPSTREAM, "internal_origins": [origin]}})
    assert problem.startswith("upstream.internal_origins:")
    assert why in problem


def test_internal_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__INTERNAL_ORIGINS", "http://10.0.0.5:8000, https://app.internal")
    settings = load_settings({"upstream": UPSTREAM})
    assert settings.upstream.internal_origins == ["http://10.0.0.5:8000", "https://app.internal"]
    assert settings.upstream.rewrite_redirects is True
    assert settings.upstream.rewrite_cookie_domains is False


@pytest.mark.parametrize("value", ["no-store\r\nSet-Cookie: a=1", 'max-age="60', "no store", ",", "max-age=60,"])
def test_bad_cache_control_values_are_named(value: str) -> None:
    [problem] = problems_of({"upstream": UPSTREAM, "security_headers": {"cache_control": value}})
    assert problem.startswith("security_headers.cache_control: not a Cache-Control value")
    [problem] = problems_of(route(cache_control=value))
    assert problem.startswith("routes.0.cache_control: not a Cache-Control value")


def test_cache_control_follows_the_preset_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({"upstream": UPSTREAM}).security_headers.cache_control == "no-store"
    web = load_settings({"upstream": UPSTREAM, "security_headers": {"preset": "web"}})
    assert web.security_headers.cache_control is None
    off = load_settings({"upstream": UPSTREAM, "security_headers": {"cache_control": None}})
    assert off.security_headers.cache_control is None
    monkeypatch.setenv("GUARDPROXY_SECURITY_HEADERS__CACHE_CONTROL", "private, max-age=0")
    assert load_settings({"upstream": UPSTREAM}).security_headers.cache_control == "private, max-age=0"


def test_route_cache_control_inherits_or_adds_none() -> None:
    settings = load_settings(route(cache_control=""))
    assert settings.routes[0].cache_control == ""
    assert load_settings(route()).routes[0].cache_control is None


@pytest.mark.parametrize(
    ("fields", "setting", "why"),
    [
        ({"deprecation": "soon"}, "routes.0.deprecation", "not a date"),
        ({"deprecation": "2026-13-01"}, "routes.0.deprecation", "not a date"),
        ({"deprecation": "2026-06-01T10:00:00"}, "routes.0.deprecation", "give the time zone"),
        ({"sunset": 20270101}, "routes.0.sunset", "not a date"),
        (
            {"deprecation": "2027-01-01", "sunset": "2026-01-01"},
            "routes.0",
            "sunset (2026-01-01T00:00:00+00:00) is earlier",
        ),
        ({"gone_after_sunset": True}, "routes.0", "gone_after_sunset needs a sunset date"),
        ({"link": "https://docs.example/v1"}, "routes.0", "link needs a deprecation or a sunset date"),
        ({"deprecation": "2026-01-01", "sunset_link": "/p"}, "routes.0", "sunset_link (rel=sunset) needs a sunset"),
        ({"deprecation": "2026-01-01", "link": 'https://x/"><script>'}, "routes.0.link", "not an http(s) URL"),
        ({"deprecation": "2026-01-01", "link": "/a>; rel=next"}, "routes.0.link", "not an http(s) URL"),
        ({"deprecation": "2026-01-01", "link": "javascript:alert(1)"}, "routes.0.link", "not an http(s) URL"),
        ({"deprecation": "2026-01-01", "link": "/a\r\nX: y"}, "routes.0.link", "not an http(s) URL"),
        ({"deprecation": "2026-01-01", "link": "docs/v1"}, "routes.0.link", "not an http(s) URL"),
    ],
)
def test_bad_deprecation_settings_are_named(fields: dict[str, Any], setting: str, why: str) -> None:
    [problem] = problems_of(route(**fields))
    assert problem.startswith(f"{setting}: ")
    assert why in problem


def test_dates_and_moments_with_zones() -> None:
    settings = load_settings(route(deprecation="2026-06-01", sunset="2027-01-01T12:00:00+01:00"))
    assert settings.routes[0].deprecation == datetime(2026, 6, 1, tzinfo=UTC)
    assert settings.routes[0].sunset == datetime(2027, 1, 1, 11, 0, tzinfo=UTC)
