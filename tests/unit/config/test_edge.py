"""Settings of the edge rules are validated at start, each error naming its setting."""

from __future__ import annotations

import pytest

from guardproxy.config import ConfigError, load_settings

BASE = {"upstream": {"url": "http://127.0.0.1:8000"}}


def problems_of(**sections: object) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_settings({**BASE, **sections})
    return error.value.problems


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"methods": {"refused": ["trace!"]}}, "methods.refused"),
        ({"methods": {"unknown": "maybe"}}, "methods.unknown"),
        ({"methods": {"extensions": ["TRACE"]}}, "extensions: TRACE is also in refused"),
        ({"trusted_proxies": {"untrusted_strip": ["host"]}}, "trusted_proxies.untrusted_strip"),
        ({"trusted_proxies": {"untrusted_strip": ["content-*"]}}, "cannot do without"),
        ({"trusted_proxies": {"untrusted_strip": ["*"]}}, "not a header name"),
        ({"trusted_proxies": {"untrusted_strip": ["x forwarded"]}}, "not a header name"),
        (
            {"upstream": {"url": "http://127.0.0.1:8000", "max_response_head_bytes": 10}},
            "upstream.max_response_head_bytes",
        ),
        ({"upstream": {"url": "http://127.0.0.1:8000", "max_response_header_fields": 0}}, "max_response_header_fields"),
        ({"routes": [{"name": "a", "path": "/a", "allowed_methods": ["CONNECT"]}]}, "CONNECT is never forwarded"),
        (
            {"routes": [{"name": "a", "path": "/a", "methods": ["POST"], "allowed_methods": ["GET"]}]},
            "GET never reaches this route",
        ),
        ({"routes": [{"name": "a", "path": "/a", "allowed_methods": ["TRACE"]}]}, "routes[a].allowed_methods"),
    ],
)
def test_bad_edge_settings_are_named(sections: dict[str, object], expected: str) -> None:
    assert any(expected in problem for problem in problems_of(**sections)), problems_of(**sections)


def test_defaults_strip_the_whole_forwarded_family_and_refuse_trace() -> None:
    settings = load_settings(BASE)
    assert "x-forwarded-*" in settings.trusted_proxies.untrusted_strip
    assert settings.methods.refused == ["TRACE", "TRACK"]
    assert settings.upstream.forward_trailers


def test_strip_list_from_the_environment_is_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_TRUSTED_PROXIES__UNTRUSTED_STRIP", "X-Legacy-User, x-tenant-*")
    assert load_settings(BASE).trusted_proxies.untrusted_strip == ["x-legacy-user", "x-tenant-*"]
