"""The methods guard (guards/methods.py) through the real chain over a mock upstream: refused
methods first, then routes' allowed_methods, unknown methods and OPTIONS *."""

from __future__ import annotations

import orjson
import pytest

from tests.support.factories import call, make_chain, make_scope, make_settings


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT"])
async def test_trace_track_and_connect_are_405_with_allow_and_never_forwarded(method: str) -> None:
    chain, upstream = make_chain()
    reply = await call(chain, make_scope(method, "/x"))
    assert reply.status == 405
    assert reply.header(b"allow") == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    body = orjson.loads(reply.body)
    assert body["type"] == "urn:guardproxy:problem:method-not-allowed"
    assert body["request_id"] == reply.header(b"x-request-id").decode()  # type: ignore[union-attr]
    assert upstream.sent == []


async def test_connect_stays_refused_when_the_refused_list_is_emptied() -> None:
    chain, upstream = make_chain(make_settings(methods={"refused": []}))
    assert (await call(chain, make_scope("CONNECT", ""))).status == 405
    assert (await call(chain, make_scope("TRACE", "/x"))).status == 200
    assert [request.method for request in upstream.sent] == [b"TRACE"]


async def test_a_route_refuses_what_it_does_not_list_and_get_brings_head() -> None:
    settings = make_settings(routes=[{"name": "items", "path": "/items/**", "allowed_methods": ["GET", "POST"]}])
    chain, upstream = make_chain(settings)
    refused = await call(chain, make_scope("DELETE", "/items/1"))
    assert refused.status == 405
    assert refused.header(b"allow") == b"GET, POST, HEAD"
    assert "DELETE" in orjson.loads(refused.body)["detail"]
    for method in ("GET", "HEAD", "POST"):
        assert (await call(chain, make_scope(method, "/items/1"))).status == 200
    assert (await call(chain, make_scope("DELETE", "/other"))).status == 200  # the default route
    assert [request.method for request in upstream.sent] == [b"GET", b"HEAD", b"POST", b"DELETE"]


async def test_a_route_selected_by_methods_refuses_within_them() -> None:
    route = {"name": "upload", "path": "/up", "methods": ["POST", "PUT"], "allowed_methods": ["POST"]}
    chain, _ = make_chain(make_settings(routes=[route]))
    assert (await call(chain, make_scope("PUT", "/up"))).status == 405
    assert (await call(chain, make_scope("GET", "/up"))).status == 200  # not this route at all


async def test_unknown_methods_are_forwarded_by_default_and_refusable() -> None:
    chain, upstream = make_chain()
    assert (await call(chain, make_scope("PROPFIND", "/dav"))).status == 200
    assert upstream.sent[0].method == b"PROPFIND"
    strict, upstream = make_chain(make_settings(methods={"unknown": "refuse", "extensions": ["REPORT"]}))
    refused = await call(strict, make_scope("PROPFIND", "/dav"))
    assert refused.status == 405
    assert refused.header(b"allow") == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, REPORT"
    assert (await call(strict, make_scope("REPORT", "/dav"))).status == 200
    assert [request.method for request in upstream.sent] == [b"REPORT"]


async def test_options_asterisk_is_answered_with_the_forwarded_methods() -> None:
    chain, upstream = make_chain(make_settings(methods={"refused": ["TRACE", "DELETE"]}))
    reply = await call(chain, make_scope("OPTIONS", "*"))
    assert reply.status == 200
    assert reply.header(b"allow") == b"GET, HEAD, POST, PUT, PATCH, OPTIONS"
    assert reply.body == b""
    assert upstream.sent == []
    assert (await call(chain, make_scope("OPTIONS", "/x"))).status == 200  # an ordinary OPTIONS
    assert len(upstream.sent) == 1


async def test_a_cors_preflight_on_a_route_without_options_is_still_answered() -> None:
    route = {"name": "api", "path": "/api/**", "allowed_methods": ["GET"], "cors": {"origins": ["https://app.test"]}}
    chain, upstream = make_chain(make_settings(routes=[route]))
    headers = [(b"host", b"x"), (b"origin", b"https://app.test"), (b"access-control-request-method", b"GET")]
    assert (await call(chain, make_scope("OPTIONS", "/api/a", headers=headers))).status in (200, 204)
    assert (await call(chain, make_scope("OPTIONS", "/api/a"))).status == 405
    assert upstream.sent == []
