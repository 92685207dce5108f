"""guards/deprecation.py: the Deprecation, Sunset and Link fields of deprecated routes, the count
of who still calls them, and 410 Gone after the sunset when asked for."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from guardproxy.config import RouteSettings
from guardproxy.guards.deprecation import (
    DeprecationGuard,
    deprecation_value,
    route_lifecycle,
    route_lifecycles,
    sunset_value,
)
from guardproxy.observability.metrics import ProxyMetrics
from guardproxy.outcomes import Outcome
from tests.support.factories import call, make_chain, make_context, make_route, make_scope, make_settings
from tests.support.mock_transport import MockResponse, MockTransport

PAST, FUTURE = "2020-01-01", "2999-01-01"


def route(**fields: Any) -> RouteSettings:
    return RouteSettings(name=fields.pop("name", "v1"), path=fields.pop("path", "/v1/**"), **fields)


def guard(*routes: RouteSettings, clock: float | None = None) -> tuple[DeprecationGuard, list[str]]:
    counted: list[str] = []
    options: dict[str, Any] = {"clock": (lambda: clock)} if clock is not None else {}
    return DeprecationGuard(routes=route_lifecycles(routes), count=counted.append, **options), counted


def test_the_wire_forms_are_the_rfcs() -> None:
    moment = datetime(2026, 6, 1, 12, 30, 5, tzinfo=UTC)
    assert deprecation_value(moment) == b"@1780317005"  # RFC 9745: an sf-date, seconds since the epoch
    assert sunset_value(moment) == b"Mon, 01 Jun 2026 12:30:05 GMT"  # RFC 8594: an IMF-fixdate


def test_a_route_without_dates_is_not_in_the_table() -> None:
    assert route_lifecycle(route()) is None
    assert route_lifecycles([route(), route(name="v2", deprecation=PAST)]).keys() == {"v2"}


def test_fields_on_every_response_of_the_route_and_the_upstreams_replaced() -> None:
    g, _ = guard(route(deprecation="2026-06-01", sunset="2027-01-01T00:00:00Z", link="https://docs.example/v1"))
    headers = [
        (b"deprecation", b"@1"),
        (b"sunset", b"Thu, 01 Jan 1970 00:00:00 GMT"),
        (b"link", b'</next>; rel="next"'),
    ]
    g.on_response_start(make_context(make_route("v1")), headers)
    assert headers == [
        (b"link", b'</next>; rel="next"'),
        (b"deprecation", b"@1780272000"),
        (b"sunset", b"Fri, 01 Jan 2027 00:00:00 GMT"),
        (b"link", b'<https://docs.example/v1>; rel="deprecation"'),
        (b"link", b'<https://docs.example/v1>; rel="sunset"'),
    ]


def test_other_routes_are_not_touched() -> None:
    g, counted = guard(route(deprecation=PAST))
    headers = [(b"deprecation", b"@1")]
    context = make_context(make_route("default"))
    g.on_response_start(context, headers)
    g.on_complete(make_scope(), context)
    assert headers == [(b"deprecation", b"@1")]
    assert counted == []


def test_a_sunset_link_of_its_own_and_a_sunset_without_deprecation() -> None:
    g, _ = guard(route(sunset=FUTURE, link="/docs/v1", sunset_link="https://docs.example/policy"))
    headers: list[tuple[bytes, bytes]] = []
    g.on_response_start(make_context(make_route("v1")), headers)
    assert headers == [
        (b"sunset", b"Tue, 01 Jan 2999 00:00:00 GMT"),
        (b"link", b'<https://docs.example/policy>; rel="sunset"'),
    ]


def test_every_request_is_counted_whoever_answers() -> None:
    g, counted = guard(route(deprecation=PAST))
    for outcome in (Outcome.OK, Outcome.RATE_LIMITED, Outcome.CLIENT_CLOSED):
        g.on_complete(make_scope(), make_context(make_route("v1"), outcome=outcome))
    assert counted == ["v1", "v1", "v1"]


@pytest.mark.parametrize(
    ("clock", "gone"),
    [
        (datetime(2027, 1, 1, tzinfo=UTC).timestamp() - 1, False),
        (datetime(2027, 1, 1, tzinfo=UTC).timestamp(), True),
        (datetime(2031, 1, 1, tzinfo=UTC).timestamp(), True),
    ],
)
def test_gone_after_the_sunset_only_when_asked(clock: float, gone: bool) -> None:
    asked, _ = guard(route(sunset="2027-01-01", gone_after_sunset=True), clock=clock)
    context = make_context(make_route("v1"))
    answer = asked.on_request(make_scope(path="/v1/x"), context)
    assert (answer is not None) is gone
    if answer is not None:
        assert answer.status == 410
        assert context.outcome is Outcome.GONE
        body = orjson.loads(answer.body)
        assert body["type"] == "urn:guardproxy:problem:gone"
        assert body["detail"] == "This endpoint was retired on 2027-01-01."
    not_asked, _ = guard(route(sunset="2027-01-01"), clock=clock)
    assert not_asked.on_request(make_scope(path="/v1/x"), make_context(make_route("v1"))) is None


async def test_through_the_chain_a_gone_route_never_reaches_the_upstream_and_is_counted() -> None:
    registry = CollectorRegistry()
    families = ProxyMetrics(registry)
    sources = families.sources()
    settings = make_settings(
        logging={"access_log": False},
        routes=[
            {"name": "old", "path": "/old/**", "deprecation": PAST, "sunset": PAST, "gone_after_sunset": True},
            {"name": "soon", "path": "/soon/**", "deprecation": FUTURE, "link": "/docs/soon"},
        ],
    )
    transport = MockTransport(lambda request: MockResponse())
    chain, _ = make_chain(settings, transport, sources)
    gone = await call(chain, make_scope(path="/old/items"))
    assert gone.status == 410
    assert gone.header(b"sunset") == b"Wed, 01 Jan 2020 00:00:00 GMT"
    assert gone.header(b"content-type") == b"application/problem+json"
    assert transport.sent == []
    soon = await call(chain, make_scope(path="/soon/items"))
    assert soon.status == 200
    assert soon.header(b"deprecation") == b"@32472144000"
    assert soon.header(b"link") == b'</docs/soon>; rel="deprecation"'
    plain = await call(chain, make_scope(path="/other"))
    assert plain.header(b"deprecation") is None
    families.flush()
    assert registry.get_sample_value("guardproxy_deprecated_requests_total", {"route": "old"}) == 1
    assert registry.get_sample_value("guardproxy_deprecated_requests_total", {"route": "soon"}) == 1
    assert registry.get_sample_value("guardproxy_deprecated_requests_total", {"route": "default"}) is None


def test_series_exist_from_the_start() -> None:
    registry = CollectorRegistry()
    families = ProxyMetrics(registry)
    settings = make_settings(routes=[{"name": "old", "path": "/old/**", "deprecation": PAST}])
    make_chain(settings, MockTransport(), families.sources())
    assert registry.get_sample_value("guardproxy_deprecated_requests_total", {"route": "old"}) == 0
