"""Rate-limit settings: what a start refuses, by setting name, and what it compiles to."""

from __future__ import annotations

import os
from typing import Any

import pytest

from guardproxy import cli
from guardproxy.config import ConfigError, Settings, load_settings
from guardproxy.ratelimit.rules import client_key, compile_rules

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:8000"}}
ROUTES = [{"name": "login", "path": "/login", "methods": ["POST"]}]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GUARDPROXY_"):
            monkeypatch.delenv(name)


def load(rate_limit: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> Settings:
    return load_settings({**UPSTREAM, "rate_limit": rate_limit, "routes": routes or ROUTES})


def problems(rate_limit: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(rate_limit, routes)
    return caught.value.problems


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "rate": "10/minute", **fields}


@pytest.mark.parametrize(
    ("rate_limit", "setting", "message"),
    [
        ({"per_client_ip": "lots"}, "rate_limit.per_client_ip", "N/PERIOD"),
        ({"rules": [rule(rate="0/second")]}, "rate_limit.rules.0.rate", "at least 1"),
        ({"rules": [rule(burst=0)]}, "rate_limit.rules.0.burst", "greater than or equal to 1"),
        ({"rules": [rule(name="has space")]}, "rate_limit.rules.0.name", "pattern"),
        ({"rules": [rule(key=[])]}, "rate_limit.rules.0.key", "at least one"),
        ({"rules": [rule(key=["cookie:session"])]}, "rate_limit.rules.0.key", "unknown key part"),
        ({"rules": [rule(key=["header:bad header"])]}, "rate_limit.rules.0.key", "unknown key part"),
        ({"rules": [rule(path="no-slash")]}, "rate_limit.rules.0.path", "bad path pattern"),
        ({"rules": [rule(path="/x", methods=["G3T"])]}, "rate_limit.rules.0.methods", "not an HTTP method"),
        ({"rules": [rule(methods=["POST"])]}, "rate_limit.rules.0", "methods need a path"),
        ({"rules": [rule(routes=["login"], path="/x")]}, "rate_limit.rules.0", "not both"),
        ({"rules": [rule(mode="shadow")]}, "rate_limit.rules.0.mode", "enforce"),
        ({"rules": [rule(), rule()]}, "rate_limit", "used twice"),
        ({"per_client_ip": "1/s", "rules": [rule(name="per-ip")]}, "rate_limit", "used twice"),
        ({"rules": [rule(routes=["logn"])]}, "(top level)", "no route is named 'logn'"),
        ({"fallback": "open"}, "rate_limit.fallback", "local"),
        ({"timeout": 0}, "rate_limit.timeout", "greater than 0"),
        ({"breaker_failures": 0}, "rate_limit.breaker_failures", "greater than or equal to 1"),
        ({"key_prefix": "has space"}, "rate_limit.key_prefix", "pattern"),
        ({"redis_url": "http://cache:6379"}, "rate_limit.redis_url", "must start with one of"),
        ({"redis_url": "cache:6379"}, "rate_limit.redis_url", "must start with one of"),
        ({"redis_url": "redis://"}, "rate_limit.redis_url", "has no host"),
        ({"redis_url": "redis://cache:port"}, "rate_limit.redis_url", "malformed host:port"),
        ({"redis_url": "redis://cache:70000"}, "rate_limit.redis_url", "malformed host:port"),
        ({"redis_url": "redis+sentinel://s1:26379,s2:26379"}, "rate_limit.redis_url", "names its service"),
        ({"redis_url": "redis+sentinel://s1:26379/"}, "rate_limit.redis_url", "names its service"),
        ({"unknown": 1}, "rate_limit.unknown", "not a known setting"),
    ],
)
def test_bad_settings_are_named(rate_limit: dict[str, Any], setting: str, message: str) -> None:
    found = problems(rate_limit)
    assert any(problem.startswith(f"{setting}: ") and message in problem for problem in found), found


def test_a_bad_redis_url_never_shows_its_password(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["check-config", "--upstream", "http://h", "--redis-url", "http://:hunter2@cache:1/0"])
    assert status == cli.EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "rate_limit.redis_url" in err
    assert "hunter2" not in err


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@cache.internal:6380/2",
        "unix:///run/redis/redis.sock",
        "redis://[::1]:6379",
        "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/1",
        "redis+cluster://node-1:7000",
    ],
)
def test_every_documented_redis_url_form_is_accepted(url: str) -> None:
    assert load({"redis_url": url}).rate_limit.redis_url is not None


def test_rules_compile_with_the_flag_rule_first() -> None:
    settings = load(
        {
            "per_client_ip": "100/minute",
            "rules": [
                rule(name="login", rate="5/minute", burst=2, routes=["login"]),
                rule(name="keys", rate="1000/hour", key=["header:X-Api-Key", "route"], path="/api/**", mode="dry-run"),
            ],
        }
    )
    per_ip, login, keys = compile_rules(settings.rate_limit)
    assert per_ip.name == "per-ip"
    assert per_ip.enforce
    assert per_ip.key_parts == ("client_ip",)
    assert per_ip.policy_item == b'"per-ip";q=100;w=60'
    assert login.rate.burst == 2
    assert login.routes == frozenset({"login"})
    assert login.matches("login", "POST", "/login")
    assert not login.matches("default", "POST", "/login")
    assert not keys.enforce
    assert keys.key_parts == (b"x-api-key", "route")
    assert keys.matches("default", "GET", "/api/x")
    assert not keys.matches("default", "GET", "/apix")


def test_no_rule_means_no_rate_limiting() -> None:
    assert compile_rules(load({}).rate_limit) == []


@pytest.mark.parametrize(
    ("one", "other", "same_budget"),
    [
        ("2001:db8::1", "2001:db8::ffff:1", True),  # one /64: one subscriber
        ("2001:db8::1", "2001:db8:0:1::1", False),
        ("192.0.2.1", "192.0.2.2", False),
        # IPv4-mapped (a dual-stack listener's view of IPv4 clients): one budget per address,
        # not one /64 for the whole IPv4 internet.
        ("::ffff:192.0.2.1", "::ffff:192.0.2.2", False),
        ("::ffff:192.0.2.1", "192.0.2.1", True),
    ],
)
def test_ipv6_clients_share_a_budget_per_64(one: str, other: str, same_budget: bool) -> None:
    assert (client_key(one) == client_key(other)) is same_budget


def test_a_client_address_that_is_not_an_address_is_still_a_key() -> None:
    assert client_key("unknown") == b"unknown"
    assert client_key("not:an:address") == b"not:an:address"
