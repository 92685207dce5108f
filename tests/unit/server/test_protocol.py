"""The server protocol byte by byte (server/protocol.py, exchange.py): raw bytes in, the real
guard chain over a mock upstream, raw bytes out. No sockets, so every case is exact and fast."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from guardproxy.proxy.errors import UpstreamClosedError
from guardproxy.server.limits import ConnectionLimits, Lifecycle, Site
from tests.support.factories import make_chain, make_settings
from tests.support.mock_transport import GatedResponse, MockResponse, MockTransport
from tests.support.wire import Wire

GET = b"GET /items?page=2 HTTP/1.1\r\nHost: api.example.com\r\n\r\n"


def problem_of(body: bytes) -> dict[str, object]:
    parsed: dict[str, object] = orjson.loads(body)
    return parsed


async def test_a_request_is_forwarded_and_its_response_framed_with_content_length() -> None:
    chain, upstream = make_chain()
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    (response,) = wire.responses()
    assert response.status == 200
    assert response.body == b'{"ok":true}'
    assert response.header(b"x-request-id") is not None
    assert upstream.sent[0].target == b"/items?page=2"
    assert not wire.transport.closed  # keep-alive


async def test_a_response_without_length_is_chunked_for_http_11_and_close_delimited_for_10() -> None:
    upstream = MockTransport(lambda request: MockResponse(headers=[], chunks=(b"ab", b"cd")))
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    assert b"transfer-encoding: chunked\r\n" in bytes(wire.transport.written)
    assert bytes(wire.transport.written).endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
    old = Wire(chain)
    old.feed(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    await old.settle()
    written = bytes(old.transport.written)
    assert b"transfer-encoding" not in written
    assert b"connection: close\r\n" in written
    assert written.endswith(b"\r\n\r\nabcd")
    assert old.transport.closed


async def test_head_and_204_carry_no_body_whatever_the_upstream_sends() -> None:
    upstream = MockTransport(lambda request: MockResponse(status=204, headers=[], chunks=(b"",)))
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n")
    await wire.settle()
    written = bytes(wire.transport.written)
    assert written.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"transfer-encoding" not in written
    assert written.endswith(b"\r\n\r\n")


class ReadyResponse(MockResponse):
    """A response whose first chunk is buffered by the time its head is handled, as a small
    upstream answer in one packet is."""

    @property
    def chunk_ready(self) -> bool:
        return True


async def test_a_head_whose_first_chunk_is_at_hand_leaves_with_it_in_one_write() -> None:
    class YieldingReadyResponse(ReadyResponse):
        async def read_chunk(self) -> bytes:
            # A loop turn between head and body (a guard that yields, say): a head flushed on
            # its own at that turn would make two writes of it.
            await asyncio.sleep(0)
            return await super().read_chunk()

    upstream = MockTransport(
        lambda request: YieldingReadyResponse(headers=[(b"content-length", b"2")], chunks=(b"ok",))
    )
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    (response,) = wire.responses()
    assert (response.status, response.body) == (200, b"ok")
    assert wire.transport.writes == 1


async def test_a_head_whose_body_is_not_at_hand_leaves_alone_before_the_body() -> None:
    gate = asyncio.Event()
    upstream = MockTransport(lambda request: GatedResponse(headers=[], chunks=(b"late",), gate=gate))
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(GET)
    for _ in range(10):  # the exchange waits for its body: let the loop turn, do not settle
        await asyncio.sleep(0)
    # The body is still on its way, and the client has the head already.
    assert bytes(wire.transport.written).startswith(b"HTTP/1.1 200 OK\r\n")
    assert bytes(wire.transport.written).endswith(b"\r\n\r\n")
    assert wire.transport.writes == 1
    gate.set()
    await wire.settle()
    assert bytes(wire.transport.written).endswith(b"4\r\nlate\r\n0\r\n\r\n")
    assert wire.transport.writes == 2


async def test_a_ready_response_that_breaks_before_its_body_still_sends_its_head_then_cuts() -> None:
    # Said to be ready, the body read fails instead: the held head must not be lost, and the
    # connection is cut so the truncated response cannot pass for whole.
    upstream = MockTransport(
        lambda request: ReadyResponse(
            headers=[(b"content-length", b"10")], chunks=(), fail_after=UpstreamClosedError("cut")
        )
    )
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(GET)
    await wire.settle()
    written = bytes(wire.transport.written)
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 10\r\n" in written
    assert written.endswith(b"\r\n\r\n")  # the head, and nothing that claims to be the body
    assert wire.transport.closed


async def test_pipelined_requests_are_answered_in_order() -> None:
    upstream = MockTransport(
        lambda request: MockResponse(headers=[(b"content-length", b"1")], chunks=(request.target[-1:],))
    )
    chain, _ = make_chain(transport=upstream)
    wire = Wire(chain)
    wire.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % index for index in range(1, 4)))
    for _ in range(5):
        await wire.settle()
    assert [response.body for response in wire.responses()] == [b"1", b"2", b"3"]


async def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    chain, upstream = make_chain()
    wire = Wire(chain)
    wire.feed(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    await asyncio.sleep(0.01)
    assert bytes(wire.transport.written) == b"HTTP/1.1 100 Continue\r\n\r\n"
    wire.feed(b"abc")
    await wire.settle()
    assert upstream.sent[0].body == b"abc"
    assert upstream.sent[0].header(b"expect") is None  # guardproxy answered it on its own side


@pytest.mark.parametrize(
    ("raw", "status", "outcome_detail"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "not valid"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "not valid"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400, "not valid"),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400, "not valid"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "chunked"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, "Transfer-Encoding"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "too long"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431, "too many"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 17_000 + b"\r\n\r\n", 431, "too large"),
        (b"GET /x\r\n\r\n", 400, "HTTP/1.0 and HTTP/1.1"),
    ],
)
async def test_hostile_heads_are_refused_with_a_problem_through_the_chain(
    raw: bytes, status: int, outcome_detail: str
) -> None:
    chain, upstream = make_chain()
    wire = Wire(chain)
    wire.feed(raw)
    await wire.settle()
    (response,) = wire.responses()
    assert response.status == status
    assert response.header(b"content-type") == b"application/problem+json"
    assert response.header(b"x-content-type-options") == b"nosniff"  # the security headers' hook ran
    assert response.header(b"connection") == b"close"
    problem = problem_of(response.body)
    assert problem["request_id"] == response.header(b"x-request-id").decode()  # type: ignore[union-attr]
    assert outcome_detail in str(problem["detail"])
    assert upstream.sent == []
    assert wire.transport.closed
    wire.feed(GET)  # nothing more is read from a refused connection
    await wire.settle()
    assert len(wire.responses()) == 1


async def test_a_head_that_trickles_past_its_deadline_gets_408() -> None:
    chain, upstream = make_chain()
    wire = Wire(chain, ConnectionLimits(head_timeout=0.05))
    for byte in b"GET / HTTP/1.1\r\nHo":
        wire.feed(bytes([byte]))
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)
    await wire.settle()
    (response,) = wire.responses()
    assert response.status == 408
    assert upstream.sent == []


async def test_an_idle_keep_alive_connection_is_closed_without_an_answer() -> None:
    chain, _ = make_chain()
    wire = Wire(chain, ConnectionLimits(keep_alive_timeout=0.05))
    wire.feed(GET)
    await wire.settle()
    await asyncio.sleep(0.15)
    assert wire.transport.closed
    assert len(wire.responses()) == 1


async def test_a_body_that_stalls_gets_408_through_the_chain_and_nothing_complete_goes_upstream() -> None:
    chain, upstream = make_chain()
    wire = Wire(chain, ConnectionLimits(body_timeout=0.05))
    wire.feed(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    await asyncio.sleep(0.2)
    await wire.settle()
    (response,) = wire.responses()
    assert response.status == 408
    assert problem_of(response.body)["request_id"]
    assert upstream.sent == []  # the mock reads the whole body before it "sends": it never did
    assert wire.transport.closed


async def test_a_broken_chunk_in_a_body_is_a_400_and_the_connection_closes() -> None:
    chain, upstream = make_chain()
    wire = Wire(chain)
    wire.feed(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(0.01)
    wire.feed(b"zz\r\n")
    await wire.settle()
    (response,) = wire.responses()
    assert response.status == 400
    assert upstream.sent == []
    assert wire.transport.closed


async def test_draining_says_connection_close_on_the_next_response() -> None:
    chain, _ = make_chain()
    lifecycle = Lifecycle()
    wire = Wire(chain, lifecycle=lifecycle)
    lifecycle.draining = True
    wire.feed(GET)
    await wire.settle()
    (response,) = wire.responses()
    assert response.header(b"connection") == b"close"
    assert wire.transport.closed


async def test_a_client_that_leaves_mid_response_stops_the_exchange() -> None:
    gate = asyncio.Event()
    chain, _ = make_chain(transport=MockTransport(lambda request: GatedResponse(headers=[], chunks=(b"x",), gate=gate)))
    wire = Wire(chain)
    wire.feed(GET)
    await asyncio.sleep(0.01)
    wire.transport.close()
    gate.set()
    await wire.settle()
    assert not wire.state.tasks
    assert b"0\r\n\r\n" not in bytes(wire.transport.written)  # never passes for a complete response


async def test_the_site_is_looked_up_for_every_new_request() -> None:
    first, first_upstream = make_chain()
    second, second_upstream = make_chain(make_settings(security_headers={"enabled": False}))
    wire = Wire(first)
    wire.feed(GET)
    await wire.settle()
    wire.site = Site(second, ConnectionLimits())  # a reload, as the protocol sees it
    wire.feed(GET)
    await wire.settle()
    assert len(first_upstream.sent) == 1
    assert len(second_upstream.sent) == 1
    first_response, second_response = wire.responses()
    assert first_response.header(b"content-security-policy") is not None
    assert second_response.header(b"content-security-policy") is None
