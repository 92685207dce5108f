"""The client address walk: rightmost untrusted hop, never a client's own claim."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.context import RequestContext
from guardproxy.guards.client_ip import ClientAddressGuard, forwarded_elements, parse_address
from guardproxy.routes import RoutePolicy

ROUTE = RoutePolicy("default", 5.0, 60.0, None, 1024)


def resolve(trusted: list[str], peer: str, headers: list[tuple[bytes, bytes]]) -> RequestContext:
    context = RequestContext(route=ROUTE, client_host=peer, scheme="http")
    ClientAddressGuard(trusted=trusted).on_request({"headers": headers}, context)
    return context


XFF = b"x-forwarded-for"


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ([(XFF, b"203.0.113.7")], "203.0.113.7"),
        ([(XFF, b"6.6.6.6, 203.0.113.7")], "203.0.113.7"),  # the client's own claim is left of it
        ([(XFF, b"6.6.6.6, 203.0.113.7, 10.1.1.1")], "203.0.113.7"),  # skip a trusted inner hop
        ([(XFF, b"6.6.6.6"), (XFF, b"203.0.113.7, 10.2.2.2")], "203.0.113.7"),  # several fields
        ([(XFF, b"10.1.1.1, 10.2.2.2")], "10.1.1.1"),  # all trusted: the leftmost
        ([(XFF, b"garbage, 10.1.1.1")], "10.1.1.1"),  # garbage stops the walk
        ([(XFF, b"203.0.113.7:4711")], "203.0.113.7"),
        ([(XFF, b"2001:db8::7")], "2001:db8::7"),
        ([(XFF, b"")], "10.0.0.1"),
        ([], "10.0.0.1"),
        ([(b"forwarded", b'for=6.6.6.6, for="[2001:db8::9]:4711"')], "2001:db8::9"),
        ([(b"forwarded", b"for=unknown")], "10.0.0.1"),
    ],
)
def test_trusted_peer_walk(headers: list[tuple[bytes, bytes]], client: str) -> None:
    assert resolve(["10.0.0.0/8"], "10.0.0.1", headers).client_host == client


def test_untrusted_peer_claims_nothing() -> None:
    headers = [
        (XFF, b"6.6.6.6"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
        (b"forwarded", b"for=6.6.6.6;proto=https"),
        (b"host", b"api.example.com"),
    ]
    context = resolve(["10.0.0.0/8"], "198.51.100.4", headers)
    assert context.client_host == "198.51.100.4"
    assert context.scheme == "http"
    assert context.scheme_from_proxy is False
    assert context.host == b"api.example.com"
    assert context.forwarded_for == b"198.51.100.4"


def test_no_trusted_proxies_means_no_trust_even_from_loopback() -> None:
    context = resolve([], "127.0.0.1", [(XFF, b"6.6.6.6"), (b"x-forwarded-proto", b"https")])
    assert context.client_host == "127.0.0.1"
    assert context.scheme == "http"


def test_trusted_proxy_reports_scheme_and_host() -> None:
    headers = [
        (XFF, b"203.0.113.7"),
        (b"x-forwarded-proto", b"http, https"),
        (b"x-forwarded-host", b"API.Example.com"),
        (b"host", b"internal:8080"),
    ]
    context = resolve(["10.0.0.0/8"], "10.0.0.1", headers)
    assert (context.scheme, context.scheme_from_proxy) == ("https", True)
    assert context.host == b"api.example.com"
    assert context.forwarded_for == b"203.0.113.7, 10.0.0.1"


@pytest.mark.parametrize("proto", [b"ftp", b"", b"HTTPS-ish", b"javascript"])
def test_unknown_forwarded_proto_is_ignored(proto: bytes) -> None:
    context = resolve(["10.0.0.0/8"], "10.0.0.1", [(b"x-forwarded-proto", proto)])
    assert (context.scheme, context.scheme_from_proxy) == ("http", False)


def test_forwarded_header_proto_and_host() -> None:
    context = resolve(
        ["10.0.0.0/8"], "10.0.0.1", [(b"forwarded", b'for=203.0.113.7;proto=https;host="api.example.com"')]
    )
    assert (context.client_host, context.scheme, context.host) == ("203.0.113.7", "https", b"api.example.com")


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1 ", "192.0.2.1"),
        ("192.0.2.1:80", "192.0.2.1"),
        ("[2001:db8::1]:80", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("999.1.1.1", None),
    ],
)
def test_parse_address(value: str, parsed: str | None) -> None:
    address = parse_address(value)
    assert (str(address) if address else None) == parsed


def test_forwarded_elements_parse_quoted_values() -> None:
    assert forwarded_elements('for="[2001:db8::1]:4711";proto=https, for=192.0.2.60;by=203.0.113.43') == [
        {"for": "[2001:db8::1]:4711", "proto": "https"},
        {"for": "192.0.2.60", "by": "203.0.113.43"},
    ]


@given(st.lists(st.text(alphabet="0123456789abcdef.:[], ", max_size=20), max_size=6))
def test_spoofed_chains_never_yield_a_trusted_or_invalid_client_from_an_untrusted_peer(hops: list[str]) -> None:
    context = resolve(["10.0.0.0/8"], "198.51.100.4", [(XFF, ", ".join(hops).encode())])
    assert context.client_host == "198.51.100.4"
