"""Host and request-target rules (http1/targets.py through server/protocol.py), byte by byte:
the hostile heads first, then what passes and what the upstream gets."""

from __future__ import annotations

import orjson
import pytest

from guardproxy.http1.targets import valid_host
from tests.support.factories import make_chain
from tests.support.wire import Wire


async def exchange(head: bytes) -> tuple[Wire, list]:  # type: ignore[type-arg]
    chain, upstream = make_chain()
    wire = Wire(chain)
    wire.feed(head)
    await wire.settle()
    return wire, upstream.sent


@pytest.mark.parametrize(
    ("head", "detail"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "must have a Host"),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", "more than one Host"),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n", "more than one Host"),
        (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", "empty"),
        (b"GET / HTTP/1.1\r\nHost: api.example.com/evil\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: user@api.example.com\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a\xffb\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a.example:80:80\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: [not:an:ip:zz]\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a%zz.example\r\n\r\n", "not a valid host"),
        (b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", "not a valid host"),
    ],
)
async def test_a_missing_repeated_or_invalid_host_is_a_400_and_nothing_goes_upstream(head: bytes, detail: str) -> None:
    wire, sent = await exchange(head)
    (response,) = wire.responses()
    assert response.status == 400
    body = orjson.loads(response.body)
    assert detail in body["detail"]
    assert body["type"] == "urn:guardproxy:problem:bad-request"
    assert response.header(b"x-request-id") is not None
    assert sent == []
    assert wire.transport.closed


@pytest.mark.parametrize(
    ("target", "detail"),
    [
        (b"ftp://other.example/x", "Only http and https"),
        (b"http://user:pw@other.example/x", "userinfo"),
        (b"*", "'*' for OPTIONS"),
        (b"*?x", "'*' for OPTIONS"),
        (b"**", "'*' for OPTIONS"),
        (b"other.example:443", "not valid"),
    ],
)
async def test_bad_targets_are_a_400(target: bytes, detail: str) -> None:
    wire, sent = await exchange(b"GET " + target + b" HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    (response,) = wire.responses()
    assert response.status == 400
    assert detail in orjson.loads(response.body)["detail"]
    assert sent == []


async def test_an_absolute_form_authority_replaces_host_and_the_upstream_gets_origin_form() -> None:
    wire, sent = await exchange(b"GET http://Other.Example:8080/p/q?x=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert wire.responses()[0].status == 200
    (request,) = sent
    assert request.target == b"/p/q?x=1"
    assert request.header(b"host") == b"Other.Example:8080"
    assert request.header(b"x-forwarded-host") == b"other.example:8080"


async def test_an_absolute_form_target_without_a_path_goes_upstream_as_slash() -> None:
    _, sent = await exchange(b"GET https://[::1]:8443?q HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sent[0].target == b"/?q"
    assert sent[0].header(b"host") == b"[::1]:8443"


async def test_absolute_form_still_needs_exactly_one_valid_host_on_http_11() -> None:
    wire, sent = await exchange(b"GET http://other.example/ HTTP/1.1\r\n\r\n")
    assert wire.responses()[0].status == 400
    assert sent == []


async def test_http_10_may_omit_host_and_absolute_form_gives_it_one() -> None:
    _, sent = await exchange(b"GET / HTTP/1.0\r\n\r\n")
    assert sent[0].header(b"host") == b"127.0.0.1:9"  # the upstream's authority
    _, sent = await exchange(b"GET http://other.example/x HTTP/1.0\r\n\r\n")
    assert sent[0].header(b"host") == b"other.example"


async def test_whitespace_around_a_host_is_not_part_of_it() -> None:
    _, sent = await exchange(b"GET / HTTP/1.1\r\nHost: api.example.com \t\r\n\r\n")
    assert sent[0].header(b"host") == b"api.example.com"


@pytest.mark.parametrize(
    "host",
    [
        b"api.example.com",
        b"API.example.com:8443",
        b"127.0.0.1:8080",
        b"[::1]:80",
        b"[2001:db8::1]",
        b"a_b.internal",
        b"x",
    ],
)
async def test_valid_hosts_pass(host: bytes) -> None:
    wire, sent = await exchange(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert wire.responses()[0].status == 200
    assert sent[0].header(b"host") == host


async def test_options_asterisk_is_answered_and_never_forwarded() -> None:
    wire, sent = await exchange(b"OPTIONS * HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    (response,) = wire.responses()
    assert response.status == 200
    assert response.header(b"allow") == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert response.header(b"content-length") == b"0"
    assert sent == []
    assert not wire.transport.closed


async def test_connect_is_a_405_with_allow_and_the_connection_closes() -> None:
    wire, sent = await exchange(b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n")
    (response,) = wire.responses()
    assert response.status == 405
    assert response.header(b"allow") == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert sent == []
    assert wire.transport.closed


def test_valid_host_follows_rfc_3986() -> None:
    assert valid_host(b"a-b.c_d~e!$&'()*+,;=:1")
    assert valid_host(b"ex%41mple.com")
    assert valid_host(b"999.999.999.999")  # a reg-name as far as syntax goes
    assert not valid_host(b"")
    assert not valid_host(b":80")
    assert not valid_host(b"a:65536")
    assert not valid_host(b"[::1]x")
    assert not valid_host(b"[v1.fe]")  # IPvFuture: no HTTP implementation uses it
