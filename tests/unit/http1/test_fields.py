"""Hop-by-hop stripping (RFC 9110 §7.6.1) and response header rewriting (http1/fields.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.asgi import Headers
from guardproxy.http1.fields import (
    HOP_BY_HOP,
    REWRITTEN_REQUEST_FIELDS,
    VIA,
    end_to_end,
    strip_response_headers,
)

REQUEST_DROP = HOP_BY_HOP | REWRITTEN_REQUEST_FIELDS


def names(headers: Headers) -> list[bytes]:
    return [name for name, _ in headers]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_each_hop_by_hop_field_is_removed(name: bytes) -> None:
    headers = [(b"accept", b"*/*"), (name, b"x"), (b"x-app", b"1")]
    assert end_to_end(headers, HOP_BY_HOP) == [(b"accept", b"*/*"), (b"x-app", b"1")]


def test_end_to_end_fields_pass_unchanged_and_in_order() -> None:
    headers = [(b"accept", b"*/*"), (b"x-b", b"2"), (b"x-a", b"1"), (b"x-b", b"3")]
    assert end_to_end(headers, HOP_BY_HOP) == headers


@pytest.mark.parametrize(
    "connection",
    [
        b"x-secret",
        b"X-Secret",
        b"  x-secret  ",
        b"\tx-secret\t",
        b"close, x-secret",
        b"keep-alive,X-SECRET,upgrade",
        b"x-secret,,",
        b", , x-secret",
    ],
)
def test_fields_named_in_connection_are_removed(connection: bytes) -> None:
    headers = [(b"connection", connection), (b"x-secret", b"token"), (b"x-app", b"1")]
    assert end_to_end(headers, HOP_BY_HOP) == [(b"x-app", b"1")]


def test_names_from_several_connection_fields_are_all_removed() -> None:
    headers = [
        (b"x-one", b"1"),
        (b"connection", b"x-one"),
        (b"x-two", b"2"),
        (b"connection", b"X-Two , close"),
        (b"x-three", b"3"),
    ]
    assert end_to_end(headers, HOP_BY_HOP) == [(b"x-three", b"3")]


def test_connection_can_name_fields_appearing_before_it() -> None:
    headers = [(b"x-early", b"1"), (b"x-early", b"2"), (b"connection", b"x-early")]
    assert end_to_end(headers, HOP_BY_HOP) == []


def test_connection_naming_absent_fields_removes_nothing_else() -> None:
    headers = [(b"connection", b"x-not-there, close"), (b"accept", b"*/*")]
    assert end_to_end(headers, HOP_BY_HOP) == [(b"accept", b"*/*")]


def test_request_side_also_drops_the_fields_guardproxy_rewrites() -> None:
    headers = [(name, b"client-value") for name in sorted(REWRITTEN_REQUEST_FIELDS)] + [(b"x-app", b"1")]
    assert end_to_end(headers, REQUEST_DROP) == [(b"x-app", b"1")]


def test_end_to_end_does_not_modify_its_input() -> None:
    headers = [(b"connection", b"x-a"), (b"x-a", b"1"), (b"x-b", b"2")]
    snapshot = list(headers)
    end_to_end(headers, HOP_BY_HOP)
    assert headers == snapshot


HEADER_NAME = st.sampled_from([b"x-a", b"x-b", b"accept", b"set-cookie", b"te", b"upgrade", b"keep-alive"])


@given(
    headers=st.lists(st.tuples(HEADER_NAME, st.binary(max_size=8)), max_size=8),
    connection=st.lists(st.sampled_from([b"x-a", b"X-B", b" accept ", b"close"]), max_size=3),
)
def test_end_to_end_never_passes_a_hop_by_hop_or_connection_named_field(
    headers: Headers, connection: list[bytes]
) -> None:
    if connection:
        headers = [*headers, (b"connection", b",".join(connection))]
    forbidden = HOP_BY_HOP | {token.strip().lower() for token in connection}
    kept = end_to_end(headers, HOP_BY_HOP)
    assert not forbidden.intersection(names(kept))
    # Everything else survives, in its original order.
    assert kept == [field for field in headers if field[0] not in forbidden]


# --- responses -----------------------------------------------------------------------------------


def test_repeated_set_cookie_fields_are_kept_in_order() -> None:
    headers = [
        (b"set-cookie", b"a=1; Path=/"),
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
        (b"set-cookie", b"c=3"),
    ]
    cookies = [value for name, value in strip_response_headers(headers, 200) if name == b"set-cookie"]
    assert cookies == [b"a=1; Path=/", b"b=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT", b"c=3"]


@pytest.mark.parametrize("status", [200, 201, 205, 206, 404, 500])
def test_content_length_is_kept_for_other_statuses(status: int) -> None:
    headers = [(b"content-length", b"12"), (b"etag", b'"v1"')]
    assert strip_response_headers(headers, status) == [*headers, (b"via", VIA)]


@pytest.mark.parametrize("status", [204, 304])
def test_content_length_is_dropped_for_204_and_304(status: int) -> None:
    # A 304's Content-Length describes a body it does not carry; relaying it would stall the client.
    headers = [(b"content-length", b"12"), (b"etag", b'"v1"')]
    assert strip_response_headers(headers, status) == [(b"etag", b'"v1"'), (b"via", VIA)]


def test_via_is_appended_last_after_any_upstream_via() -> None:
    kept = strip_response_headers([(b"via", b"1.1 upstream-lb"), (b"x-app", b"1")], 200)
    assert kept == [(b"via", b"1.1 upstream-lb"), (b"x-app", b"1"), (b"via", VIA)]


def test_response_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    headers = [
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive, x-internal"),
        (b"keep-alive", b"timeout=5"),
        (b"x-internal", b"secret"),
        (b"content-type", b"application/json"),
    ]
    assert strip_response_headers(headers, 200) == [(b"content-type", b"application/json"), (b"via", VIA)]


def test_empty_response_headers_get_only_via() -> None:
    assert strip_response_headers([], 304) == [(b"via", VIA)]
