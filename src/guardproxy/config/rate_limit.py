"""Rate-limit settings: the shared store, its failure behaviour, and the rules."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, SecretStr, field_validator, model_validator

from guardproxy.config.base import MethodList, Name, PathPattern, Section
from guardproxy.ratelimit.gcra import parse_rate
from guardproxy.ratelimit.redis_url import SCHEMES, parse_host_port

# The rule `--rate-limit N/PERIOD` creates.
PER_CLIENT_RULE = "per-ip"
_HEADER_KEY = re.compile(r"header:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
# A verified JWT claim (auth), e.g. claim:sub; and the verified API key's name.
_CLAIM_KEY = re.compile(r"claim:[A-Za-z0-9_.:/-]{1,64}")
API_KEY_PART = "api_key"


def _valid_rate(value: str) -> str:
    parse_rate(value)
    return value


class RateLimitRule(Section):
    # Shown to clients in RateLimit-Policy and used in metrics: keep it short and stable.
    name: Name
    # N/PERIOD: 100/minute, 10/second, 1000/hour, 5/30s, 50/day.
    rate: str
    # Requests admitted at once before the pace of `rate` applies; null: N.
    burst: Annotated[int, Field(ge=1)] | None = None
    # What a budget belongs to: client_ip, route, header:<Name> (a missing header counts as the
    # client's address instead), claim:<name> (a claim of the verified JWT, e.g. claim:sub) or
    # api_key (the verified API key's name) — without a verified identity, the client's
    # address — or several of them together.
    key: list[str] = ["client_ip"]
    # Which requests the rule counts: route names, or a path pattern with optional methods, or
    # (all three empty) every request.
    routes: list[str] = []
    path: PathPattern | None = None
    methods: MethodList | None = None
    # enforce refuses with 429; dry-run only logs and counts what it would have refused.
    mode: Literal["enforce", "dry-run"] = "enforce"

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        return _valid_rate(value)

    @field_validator("key")
    @classmethod
    def _key_parts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one of client_ip, route, header:<Name>, claim:<name>, api_key")
        for part in value:
            if part not in ("client_ip", "route", API_KEY_PART) and not (
                _HEADER_KEY.fullmatch(part) or _CLAIM_KEY.fullmatch(part)
            ):
                raise ValueError(
                    f"unknown key part {part!r}: use client_ip, route, header:<Name>, claim:<name> or api_key"
                )
        return value

    @model_validator(mode="after")
    def _one_way_to_match(self) -> RateLimitRule:
        if self.routes and (self.path is not None or self.methods is not None):
            raise ValueError("match by routes or by path and methods, not both")
        if self.methods is not None and self.path is None:
            raise ValueError("methods need a path (use path: /** for every path)")
        parse_rate(self.rate, self.burst)  # the burst must fit the rate, too
        return self


class RateLimitSettings(Section):
    # A per-client-IP rule (named per-ip) on every route, e.g. 100/minute. Flag --rate-limit.
    per_client_ip: str | None = None
    # Share limits between instances through Redis: redis://, rediss://, unix://,
    # redis+sentinel://host[:port][,host...]/service[/db], redis+cluster://host[:port].
    # null: limits live in each process's memory. Flag --redis-url.
    redis_url: SecretStr | None = None
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9:_.-]{0,64}$")] = "guardproxy:rl:"
    # Seconds a request waits for the shared store before the fallback decides.
    timeout: PositiveFloat = 0.05
    # When Redis fails: local (the in-process limiter), allow (admit) or deny (429).
    fallback: Literal["local", "allow", "deny"] = "local"
    # Failures in a row that open the circuit, and seconds before Redis is probed again.
    breaker_failures: Annotated[int, Field(ge=1)] = 3
    breaker_cooldown: PositiveFloat = 5.0
    # Keys the in-process limiter keeps at most, per process.
    local_max_keys: Annotated[int, Field(ge=1)] = 1_000_000
    rules: list[RateLimitRule] = []

    @field_validator("per_client_ip")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return _valid_rate(value) if value is not None else None

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        scheme, sep, rest = url.partition("://")
        # Messages never quote the URL: it may carry a password.
        if not sep or scheme.lower() not in SCHEMES:
            raise ValueError(f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
        hosts = rest.split("/", 1)[0].rpartition("@")[2]
        if scheme != "unix" and not hosts:
            raise ValueError("has no host")
        for host in hosts.split(",") if scheme != "unix" else ():
            try:
                parse_host_port(host, default_port=6379)
            except ValueError:
                raise ValueError("has a malformed host:port") from None
        if scheme.endswith("+sentinel") and not rest.partition("/")[2].strip("/"):
            raise ValueError("a Sentinel URL names its service: redis+sentinel://host[:port]/service[/db]")
        return value

    @model_validator(mode="after")
    def _unique_rules(self) -> RateLimitSettings:
        names = [rule.name for rule in self.rules] + ([PER_CLIENT_RULE] if self.per_client_ip else [])
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"rule name {name!r} is used twice ({PER_CLIENT_RULE!r} is per_client_ip's)")
        return self
