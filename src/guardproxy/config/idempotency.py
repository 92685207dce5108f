"""Idempotency-Key settings (draft-ietf-httpapi-idempotency-key-header): the shared section and
what a route opts into."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, SecretStr, field_validator, model_validator

from guardproxy.config.base import MethodList, Section
from guardproxy.config.rate_limit import RateLimitSettings

_HEADER_KEY = re.compile(r"header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


class IdempotencySettings(Section):
    # Seconds a completed response is kept for replay, from its completion (default one day).
    ttl: PositiveFloat = 86_400.0
    # Seconds a request in flight holds its key. A worker that dies mid-request leaves at most
    # this lock behind; it must outlast the slowest legitimate upstream answer, and be shorter
    # than `ttl` so that a lost lock never outlives the replay window.
    lock_ttl: PositiveFloat = 60.0
    # Largest response body stored for replay; a larger response is forwarded and not stored.
    max_response_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024
    # Longest Idempotency-Key value accepted (a longer one is a 400).
    key_max_length: Annotated[int, Field(ge=1, le=1024)] = 255
    # When the store fails: pass (forward without protection, logged and counted) or refuse (503).
    fail_mode: Literal["pass", "refuse"] = "pass"
    # The store: this Redis; null: rate_limit.redis_url when set; else each process's memory
    # (one worker only). Same URL forms as rate_limit.redis_url.
    redis_url: SecretStr | None = None
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9:_.-]{0,64}$")] = "guardproxy:idem:"
    # Seconds a request waits for the store before fail_mode decides.
    timeout: PositiveFloat = 0.1
    # Whose key it is, besides method and path: client_ip and/or header:<Name> (e.g.
    # header:Authorization; a missing header falls back to the client address).
    key: list[str] = ["client_ip"]
    # What the in-memory store holds at most (per process): keys, and bytes of keys and stored
    # responses together; past either, expired entries and then the oldest go first.
    memory_max_keys: Annotated[int, Field(ge=1)] = 100_000
    memory_max_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024 * 1024

    @field_validator("key")
    @classmethod
    def _key_parts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one of client_ip, header:<Name>")
        for part in value:
            if part != "client_ip" and not _HEADER_KEY.fullmatch(part):
                raise ValueError(f"unknown key part {part!r}: use client_ip or header:<Name>")
        return value

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        # The same forms as the rate limit's store; that check never quotes the URL.
        return RateLimitSettings._url(value)

    @model_validator(mode="after")
    def _lock_shorter_than_ttl(self) -> IdempotencySettings:
        if self.lock_ttl >= self.ttl:
            raise ValueError("lock_ttl must be shorter than ttl")
        return self


class IdempotencyRoute(Section):
    """A route's opt-in: which methods honour Idempotency-Key, and whether it is required."""

    enabled: bool = False
    methods: MethodList = ["POST", "PATCH"]
    # Refuse (400) requests of these methods that carry no Idempotency-Key.
    required: bool = False

    @field_validator("methods")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one method")
        return value


def check_idempotency(
    settings: IdempotencySettings,
    rate_limit_redis_url: SecretStr | None,
    workers: int,
    route_timeouts: Mapping[str, float | None],
) -> None:
    """What the idempotency settings require of the rest (raised as a top-level problem).
    `route_timeouts`: each idempotent route's total upstream timeout, by route name."""
    if route_timeouts and workers > 1 and (settings.redis_url or rate_limit_redis_url) is None:
        # Each worker would keep keys of its own: a retry on another worker would run again.
        raise ValueError("idempotency with server.workers > 1 needs idempotency.redis_url or rate_limit.redis_url")
    for name, timeout in route_timeouts.items():
        if timeout is not None and timeout >= settings.lock_ttl:
            raise ValueError(
                f"routes[{name}]: the upstream total_timeout ({timeout:g} s) must be shorter than "
                f"idempotency.lock_ttl ({settings.lock_ttl:g} s), or a slow request could lose its lock"
            )
