"""Idempotency settings: validated at start with the setting's dotted name, and a guard only
where a route opts in (routes without it pay nothing: the guard is not in the chain)."""

from __future__ import annotations

from typing import Any

import pytest

from guardproxy.config import ConfigError, Settings, load_settings
from guardproxy.guards.idempotency import IdempotencyGuard
from guardproxy.guards.idempotency import build_idempotency_guard as idempotency_guard
from guardproxy.idempotency.redis_store import RedisIdempotencyStore
from guardproxy.idempotency.store import MemoryIdempotencyStore
from guardproxy.runtime import build_guards

UPSTREAM = {"upstream": {"url": "http://127.0.0.1:9"}}
PAY = {"name": "pay", "path": "/pay", "idempotency": {"enabled": True}}


def load(**values: Any) -> Settings:
    return load_settings({**UPSTREAM, **values})


def problems(**values: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(**values)
    return caught.value.problems


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"idempotency": {"ttl": 0}}, "idempotency.ttl: Input should be greater than 0"),
        ({"idempotency": {"ttl": 10, "lock_ttl": 10}}, "idempotency: lock_ttl must be shorter than ttl"),
        ({"idempotency": {"fail_mode": "open"}}, "idempotency.fail_mode: Input should be 'pass' or 'refuse'"),
        ({"idempotency": {"key": []}}, "idempotency.key: needs at least one of client_ip, header:<Name>"),
        ({"idempotency": {"key": ["route"]}}, "idempotency.key: unknown key part 'route'"),
        ({"idempotency": {"key_max_length": 0}}, "idempotency.key_max_length: Input should be greater than"),
        ({"idempotency": {"redis_url": "http://x"}}, "idempotency.redis_url: must start with one of redis://"),
        ({"idempotency": {"ttl_seconds": 5}}, "idempotency.ttl_seconds: is not a known setting"),
        ({"routes": [{**PAY, "idempotency": {"enabled": True, "methods": []}}]}, "routes.0.idempotency.methods"),
        ({"routes": [{**PAY, "idempotency": {"methods": ["P O"]}}]}, "routes.0.idempotency.methods: not an HTTP"),
        (
            {"routes": [PAY], "server": {"workers": 2}},
            "(top level): idempotency with server.workers > 1 needs idempotency.redis_url or rate_limit.redis_url",
        ),
        (
            {"routes": [{**PAY, "upstream": {"total_timeout": 90}}]},
            "(top level): routes[pay]: the upstream total_timeout (90 s) must be shorter than "
            "idempotency.lock_ttl (60 s)",
        ),
    ],
)
def test_bad_settings_are_named(values: dict[str, Any], expected: str) -> None:
    assert any(problem.startswith(expected) for problem in problems(**values)), problems(**values)


def test_a_redis_url_in_a_problem_never_shows_its_password() -> None:
    found = problems(idempotency={"redis_url": "http://user:hunter2@host"})
    assert not any("hunter2" in problem for problem in found)


def test_several_workers_are_fine_with_a_shared_store() -> None:
    load(routes=[PAY], server={"workers": 2}, rate_limit={"redis_url": "redis://127.0.0.1:6379/0"})
    load(routes=[PAY], server={"workers": 2}, idempotency={"redis_url": "redis://127.0.0.1:6379/0"})
    # Without an idempotent route, nothing needs sharing.
    load(server={"workers": 2})


def test_without_an_idempotent_route_there_is_no_guard() -> None:
    settings = load(routes=[{"name": "pay", "path": "/pay"}])
    assert idempotency_guard(settings, None) is None
    assert not any(isinstance(guard, IdempotencyGuard) for guard in build_guards(settings, None))


def test_the_guard_comes_after_the_rate_limit_and_before_compression() -> None:
    settings = load(routes=[PAY], rate_limit={"per_client_ip": "10/second"})
    names = [type(guard).__name__ for guard in build_guards(settings, None)]
    assert names.index("RateLimitGuard") < names.index("IdempotencyGuard") < names.index("CompressionGuard")
    assert names.index("IdempotencyGuard") == len(names) - 2


def test_the_store_follows_the_redis_urls() -> None:
    memory = idempotency_guard(load(routes=[PAY]), None)
    assert memory is not None
    assert isinstance(memory.ledger.store, MemoryIdempotencyStore)
    for values in (
        {"rate_limit": {"redis_url": "redis://127.0.0.1:6379/0"}},
        {"idempotency": {"redis_url": "redis://127.0.0.1:6379/1"}},
    ):
        guard = idempotency_guard(load(routes=[PAY], **values), None)
        assert guard is not None
        assert isinstance(guard.ledger.store, RedisIdempotencyStore)
