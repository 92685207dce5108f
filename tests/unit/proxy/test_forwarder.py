"""The forwarder over a mock upstream transport (proxy/forwarder.py): what the upstream gets,
what the client gets back, and how each upstream failure is answered."""

from __future__ import annotations

import orjson
import pytest

from guardproxy.proxy.errors import (
    NoEndpointError,
    PoolExhaustedError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from tests.support.factories import call, make_chain, make_scope, make_settings
from tests.support.mock_transport import MockResponse, MockTransport, SentRequest


def raising(error: Exception):  # type: ignore[no-untyped-def]
    def handler(request: SentRequest) -> MockResponse:
        raise error

    return handler


async def test_the_upstream_gets_the_raw_target_and_only_end_to_end_fields() -> None:
    chain, upstream = make_chain()
    scope = make_scope(
        "GET",
        "/a b",
        query=b"x=%20&y",
        headers=[
            (b"host", b"api.example.com"),
            (b"connection", b"keep-alive, x-secret-hop"),
            (b"x-secret-hop", b"1"),
            (b"te", b"trailers"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"x-request-id", b"client-chosen"),
            (b"accept", b"application/json"),
        ],
    )
    scope["raw_path"] = b"/a%20b"
    reply = await call(chain, scope)
    assert reply.status == 200
    (sent,) = upstream.sent
    assert sent.target == b"/a%20b?x=%20&y"
    names = [name for name, _ in sent.headers]
    for dropped in (b"connection", b"x-secret-hop", b"te"):
        assert dropped not in names
    assert sent.header(b"x-forwarded-for") == b"203.0.113.9"  # from an untrusted peer: replaced
    assert sent.header(b"x-forwarded-host") == b"api.example.com"
    assert sent.header(b"host") == b"api.example.com"  # preserved by default: apps build URLs from it
    assert sent.header(b"via") == b"1.1 guardproxy"
    assert sent.header(b"x-request-id") == b"client-chosen"  # well formed: kept
    assert sent.header(b"accept") == b"application/json"


async def test_a_streamed_request_body_arrives_whole() -> None:
    chain, upstream = make_chain()
    scope = make_scope("POST", "/upload", headers=[(b"host", b"x"), (b"transfer-encoding", b"chunked")])
    reply = await call(chain, scope, [b"ab", b"cd", b""])
    assert reply.status == 200
    assert upstream.sent[0].body == b"abcd"
    assert upstream.sent[0].content_length is None  # sent chunked


async def test_response_hop_by_hop_fields_are_removed_and_set_cookie_kept_apart() -> None:
    headers = [
        (b"connection", b"x-internal"),
        (b"x-internal", b"1"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-type", b"text/plain"),
    ]
    chain, _ = make_chain(transport=MockTransport(lambda request: MockResponse(headers=headers, chunks=(b"hi",))))
    reply = await call(chain, make_scope())
    names = [name for name, _ in reply.headers]
    assert b"x-internal" not in names
    assert b"connection" not in names
    assert [value for name, value in reply.headers if name == b"set-cookie"] == [b"a=1", b"b=2"]
    assert reply.body == b"hi"


@pytest.mark.parametrize(
    ("error", "status", "slug", "outcome_header"),
    [
        (UpstreamConnectError("connect failed: ConnectionRefusedError"), 502, "upstream-unavailable", None),
        (UpstreamClosedError("connection reset before the response was complete"), 502, "upstream-unavailable", None),
        (UpstreamProtocolError("invalid response: bad status"), 502, "upstream-bad-response", None),
        (UpstreamTimeoutError("no progress within the upstream timeout"), 504, "upstream-timeout", None),
        (PoolExhaustedError("no upstream connection became free in time"), 503, "upstream-busy", b"1"),
        (NoEndpointError("no upstream endpoint is taking requests", 3.2), 503, "upstream-circuit-open", b"4"),
        (NoEndpointError("no upstream endpoint is taking requests", 0.0), 503, "upstream-circuit-open", b"1"),
    ],
)
async def test_each_upstream_failure_is_a_problem_that_leaks_nothing(
    error: Exception, status: int, slug: str, outcome_header: bytes | None
) -> None:
    chain, _ = make_chain(transport=MockTransport(raising(error)))
    reply = await call(chain, make_scope())
    assert reply.status == status
    problem = orjson.loads(reply.body)
    assert problem["type"] == f"urn:guardproxy:problem:{slug}"
    assert problem["request_id"] == reply.header(b"x-request-id").decode()  # type: ignore[union-attr]
    assert str(error) not in reply.body.decode()  # the reason is logged, never sent
    assert reply.header(b"retry-after") == outcome_header


async def test_an_upstream_that_fails_mid_body_cuts_the_response_instead_of_ending_it() -> None:
    failing = MockResponse(headers=[], chunks=(b"partial",), fail_after=UpstreamClosedError("reset"))
    chain, upstream = make_chain(transport=MockTransport(lambda request: failing))
    reply = await call(chain, make_scope())
    assert reply.status == 200
    bodies = [message for message in reply.messages if message["type"] == "http.response.body"]
    assert all(message.get("more_body") for message in bodies)  # never a final, "complete" body
    assert upstream.responses[0].closed


async def test_a_client_that_leaves_before_its_body_is_sent_reaches_nobody() -> None:
    chain, upstream = make_chain()
    scope = make_scope("POST", "/upload", headers=[(b"host", b"x"), (b"content-length", b"10")])

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    await chain(scope, receive, send)
    assert upstream.responses == []
    assert sent == []


async def test_without_preserve_host_the_upstream_gets_its_own_authority() -> None:
    chain, upstream = make_chain(make_settings(upstream={"url": "http://127.0.0.1:9", "preserve_host": False}))
    await call(chain, make_scope(headers=[(b"host", b"api.example.com")]))
    assert upstream.sent[0].header(b"host") == b"127.0.0.1:9"
    assert upstream.sent[0].header(b"x-forwarded-host") == b"api.example.com"
