"""Settings of upstream resilience: several endpoints, balancing, retries, circuit breaking.

They live under `upstream` (`upstream.endpoints`, `upstream.balance`, `upstream.retries`,
`upstream.circuit_breaker`); a route may override its retries (`routes[].upstream.retries`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, NonNegativeFloat, PositiveFloat, model_validator
from pydantic_settings import NoDecode

from guardproxy.config.base import MethodList, Name, Section

# RFC 9110 §9.2.2: the methods whose intended effect is the same however often they are sent.
IDEMPOTENT_METHODS = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
Balance = Literal["least_in_flight", "round_robin"]


class EndpointSettings(Section):
    # An origin (scheme://host[:port]); every endpoint of an upstream has the same scheme.
    url: str
    # The label in metrics, logs and /readyz; the url's host:port when not set.
    name: Name | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


class RetrySettings(Section):
    # Retries after the first attempt (0: never retry). Each goes to another endpoint when
    # there is one.
    attempts: Annotated[int, Field(ge=0, le=10)] = 2
    # Back-off before a retry: a random delay up to min(backoff_cap, backoff_base * 2^retry)
    # seconds ("full jitter").
    backoff_base: NonNegativeFloat = 0.025
    backoff_cap: NonNegativeFloat = 0.25
    # Methods also retried when the connection broke after the request went out (but before
    # any response byte), if the body was empty or still fits the replay buffer.
    idempotent_methods: MethodList = IDEMPOTENT_METHODS
    # Bytes of a request body kept so that it can be sent again; a longer body is never resent.
    replay_buffer_bytes: Annotated[int, Field(ge=0)] = 64 * 1024
    # The retry budget: retries are at most budget_ratio of the requests in the last
    # budget_window seconds, plus budget_min_per_second * budget_window, so that retries cannot
    # multiply the load on an upstream that is down.
    budget_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    budget_min_per_second: NonNegativeFloat = 3.0
    budget_window: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetrySettings:
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be at least backoff_base")
        return self


class RetryOverride(Section):
    """What a route may change of `upstream.retries`; null keeps the global value."""

    attempts: Annotated[int, Field(ge=0, le=10)] | None = None
    backoff_base: NonNegativeFloat | None = None
    backoff_cap: NonNegativeFloat | None = None
    idempotent_methods: MethodList | None = None


class CircuitBreakerSettings(Section):
    enabled: bool = True
    # Opens after this many failures in a row (connect errors, cut connections, timeouts, and
    # with several endpoints 502/503/504 answers) ...
    consecutive_failures: Annotated[int, Field(ge=1)] = 5
    # ... or when at least this share of the last `window` seconds' requests failed, once
    # there were min_requests of them.
    failure_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    min_requests: Annotated[int, Field(ge=1)] = 20
    window: PositiveFloat = 10.0
    # Seconds an open circuit keeps traffic away from the endpoint; then half-open_probes
    # requests test it: all succeed and it closes, one fails and it opens again.
    open_for: PositiveFloat = 5.0
    half_open_probes: Annotated[int, Field(ge=1, le=100)] = 3


def first_endpoint_url(endpoints: Any) -> Any:
    """The first endpoint's url in the raw input (a list, or a comma list from the
    environment): it stands for the upstream when `upstream.url` is left out."""
    items = _comma_separated(endpoints)
    first = items[0] if isinstance(items, list) and items else None
    return first.get("url") if isinstance(first, dict) else first


def check_endpoints(endpoints: list[EndpointSettings], check_origin: Callable[[str], str]) -> list[EndpointSettings]:
    """Every endpoint an origin, all of one scheme, names unique."""
    for index, endpoint in enumerate(endpoints):
        try:
            check_origin(endpoint.url)
        except ValueError as exc:
            raise ValueError(f"[{index}].url {exc}") from None
    if len({endpoint.url.split(":", 1)[0] for endpoint in endpoints}) > 1:
        raise ValueError("every endpoint needs the same scheme")
    names = [endpoint.name or endpoint.url for endpoint in endpoints]
    if len(set(names)) != len(names):
        raise ValueError("names (or urls) must be unique")
    return endpoints


def check_url_among(url: str, endpoints: list[EndpointSettings]) -> None:
    """`url` gives the upstream's Host and the origin its redirects are rewritten from: with
    endpoints, it is one of them."""
    if endpoints and url.rstrip("/") not in {endpoint.url.rstrip("/") for endpoint in endpoints}:
        raise ValueError("upstream.url must be one of upstream.endpoints when both are set (or leave it out)")


def _comma_separated(value: Any) -> Any:
    """GUARDPROXY_UPSTREAM__ENDPOINTS=http://a:8000,http://b:8000 from the environment."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


Endpoints = Annotated[list[EndpointSettings], NoDecode, BeforeValidator(_comma_separated)]


__all__ = [
    "IDEMPOTENT_METHODS",
    "Balance",
    "CircuitBreakerSettings",
    "EndpointSettings",
    "Endpoints",
    "RetryOverride",
    "RetrySettings",
    "check_endpoints",
    "check_url_among",
    "first_endpoint_url",
]
