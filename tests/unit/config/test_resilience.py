"""Settings of upstream resilience (config/resilience.py, upstream.* in config/server.py): what
loads, and every bad value refused with the dotted name of its setting."""

from __future__ import annotations

import pytest

from guardproxy.config import ConfigError, load_settings


def problems_of(upstream: dict[str, object], **more: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_settings({"upstream": upstream, **more})
    return raised.value.problems


def test_endpoints_alone_give_the_upstream_its_url() -> None:
    settings = load_settings(
        {"upstream": {"endpoints": ["http://10.0.0.1:8000", {"url": "http://10.0.0.2:8000", "name": "b"}]}}
    )
    assert settings.upstream.url == "http://10.0.0.1:8000"
    assert [endpoint.name for endpoint in settings.upstream.endpoints] == [None, "b"]


def test_endpoints_from_the_environment_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__ENDPOINTS", "http://127.0.0.1:1, http://127.0.0.1:2")
    settings = load_settings({})
    assert [endpoint.url for endpoint in settings.upstream.endpoints] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ({"endpoints": ["http://a:1", "https://b:2"]}, "upstream.endpoints: every endpoint needs the same scheme"),
        ({"endpoints": ["http://a:1", "ftp://b"]}, "upstream.endpoints: [1].url must be an http:// or https:// URL"),
        ({"endpoints": ["http://a:1/path"]}, "must be an origin only"),
        ({"endpoints": ["http://user:pw@a:1"]}, "must not contain credentials"),
        ({"endpoints": ["http://a:1", "http://a:1"]}, "upstream.endpoints: names (or urls) must be unique"),
        (
            {"endpoints": [{"url": "http://a:1", "name": "x"}, {"url": "http://b:1", "name": "x"}]},
            "names (or urls) must be unique",
        ),
        ({"endpoints": [{"url": "http://a:1", "name": "has space"}]}, "upstream.endpoints.0.name"),
        ({"url": "http://c:1", "endpoints": ["http://a:1"]}, "upstream.url must be one of upstream.endpoints"),
        ({"url": "http://a:1", "endpoints": ["http://a:1"], "dns_ttl": 30}, "leave upstream.endpoints out"),
        ({"url": "http://a:1", "dns_ttl": 0}, "upstream.dns_ttl"),
        ({"url": "http://a:1", "balance": "random"}, "upstream.balance"),
        ({"url": "http://a:1", "retries": {"attempts": 11}}, "upstream.retries.attempts"),
        ({"url": "http://a:1", "retries": {"attempts": -1}}, "upstream.retries.attempts"),
        ({"url": "http://a:1", "retries": {"backoff_base": 1, "backoff_cap": 0.5}}, "backoff_cap must be at least"),
        ({"url": "http://a:1", "retries": {"budget_ratio": 1.5}}, "upstream.retries.budget_ratio"),
        ({"url": "http://a:1", "retries": {"idempotent_methods": ["GE T"]}}, "not an HTTP method"),
        ({"url": "http://a:1", "circuit_breaker": {"failure_ratio": 0}}, "upstream.circuit_breaker.failure_ratio"),
        ({"url": "http://a:1", "circuit_breaker": {"consecutive_failures": 0}}, "consecutive_failures"),
        ({"url": "http://a:1", "health_check": {"expected_status": [99]}}, "upstream.health_check.expected_status"),
        ({"url": "http://a:1", "health_check": {"unhealthy_after": 0}}, "upstream.health_check.unhealthy_after"),
        ({"url": "http://a:1", "retries": {"tries": 3}}, "upstream.retries.tries: is not a known setting"),
    ],
)
def test_bad_values_name_their_setting(upstream: dict[str, object], expected: str) -> None:
    assert any(expected in problem for problem in problems_of(upstream)), problems_of(upstream)


@pytest.mark.parametrize("value", [",", " , ", "[]"])
def test_an_empty_endpoint_list_from_the_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GUARDPROXY_UPSTREAM__ENDPOINTS", value)
    with pytest.raises(ConfigError) as raised:
        load_settings({})
    assert raised.value.problems


def test_a_route_override_is_checked_too() -> None:
    routes = [{"name": "r", "path": "/r", "upstream": {"retries": {"attempts": 99}}}]
    assert any(
        "routes.0.upstream.retries.attempts" in problem for problem in problems_of({"url": "http://a:1"}, routes=routes)
    )
