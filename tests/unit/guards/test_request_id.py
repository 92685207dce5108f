"""Request IDs and W3C trace context (guards/request_id.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy import context as request_context
from guardproxy.asgi import Headers
from guardproxy.context import RequestContext, new_request_id
from guardproxy.guards.request_id import RequestIdGuard, continue_trace
from guardproxy.routes import RoutePolicy

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
# What guardproxy sends upstream: always version 00, lower-case hex, no extra fields.
SENT_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# The X-Request-ID values guardproxy accepts from clients.
ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def parse_sent(traceparent: bytes) -> tuple[bytes, bytes, bytes]:
    match = SENT_TRACEPARENT.fullmatch(traceparent)
    assert match is not None, traceparent
    trace_id, span_id, flags = match.groups()
    assert trace_id != b"0" * 32
    assert span_id != b"0" * 16
    return trace_id, span_id, flags


# --- continue_trace ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "flags"),
    [
        (VALID, b"01"),
        (f"00-{TRACE_ID}-{PARENT_ID}-00".encode(), b"00"),
        (b"  " + VALID + b"  ", b"01"),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-what-the-future-holds".encode(), b"01"),  # later versions may add fields
        (f"cc-{TRACE_ID}-{PARENT_ID}-09".encode(), b"09"),
    ],
)
def test_valid_traceparent_is_continued_with_a_new_span(incoming: bytes, flags: bytes) -> None:
    sent, continued = continue_trace(incoming)
    trace_id, span_id, sent_flags = parse_sent(sent)
    assert continued is True
    assert (trace_id, sent_flags) == (TRACE_ID.encode(), flags)
    assert span_id != PARENT_ID.encode()


INVALID_TRACEPARENTS = [
    pytest.param(VALID.upper(), id="uppercase"),
    pytest.param(f"00-{TRACE_ID.upper()}-{PARENT_ID}-01".encode(), id="uppercase-trace-id"),
    pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01".encode(), id="version-ff"),
    pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01".encode(), id="zero-trace-id"),
    pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01".encode(), id="zero-parent-id"),
    pytest.param(VALID + b"-extra", id="version-00-with-extra-fields"),
    pytest.param(VALID[:-1], id="flags-too-short"),
    pytest.param(VALID + b"1", id="flags-too-long"),
    pytest.param(f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01".encode(), id="trace-id-too-short"),
    pytest.param(f"00-{TRACE_ID}0-{PARENT_ID}-01".encode(), id="trace-id-too-long"),
    pytest.param(f"00-{TRACE_ID}-{PARENT_ID[:-1]}-01".encode(), id="parent-id-too-short"),
    pytest.param(f"0-{TRACE_ID}-{PARENT_ID}-01".encode(), id="version-too-short"),
    pytest.param(f"0g-{TRACE_ID}-{PARENT_ID}-01".encode(), id="version-not-hex"),
    pytest.param(f"00_{TRACE_ID}_{PARENT_ID}_01".encode(), id="wrong-separator"),
    pytest.param(VALID[:-1] + b"\n1", id="newline-inside-flags"),
    pytest.param(f"01-{TRACE_ID}-{PARENT_ID}-01-\nx".encode(), id="newline-in-extra-fields"),
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b"\xff\xfe\x00", id="binary"),
    pytest.param(b"", id="empty"),
    pytest.param(None, id="absent"),
]


@pytest.mark.parametrize("incoming", INVALID_TRACEPARENTS)
def test_invalid_traceparent_starts_a_fresh_trace(incoming: bytes | None) -> None:
    sent, continued = continue_trace(incoming)
    trace_id, _span_id, flags = parse_sent(sent)
    assert continued is False
    assert trace_id != TRACE_ID.encode()
    assert flags == b"00"


@given(st.one_of(st.none(), st.binary(max_size=80)))
def test_continue_trace_always_sends_a_traceparent_that_would_itself_be_continued(incoming: bytes | None) -> None:
    sent, _ = continue_trace(incoming)
    parse_sent(sent)
    assert continue_trace(sent)[1] is True


@given(seed=st.integers(min_value=0, max_value=2**64))
def test_generated_ids_always_have_the_accepted_shape(seed: int) -> None:
    # Reseeding the module's generator walks many of its states; the real state is restored after.
    state = request_context._random.getstate()
    try:
        request_context._random.seed(seed)
        assert ACCEPTED_REQUEST_ID.fullmatch(new_request_id())
        assert len(new_request_id()) == 32
        parse_sent(continue_trace(None)[0])
    finally:
        request_context._random.setstate(state)


def test_request_ids_and_spans_do_not_repeat() -> None:
    assert len({new_request_id() for _ in range(1000)}) == 1000
    assert len({parse_sent(continue_trace(VALID)[0])[1] for _ in range(1000)}) == 1000


# --- RequestIdGuard ------------------------------------------------------------------------------


def call_guard(headers: Headers, *, trust_incoming: bool = True) -> RequestContext:
    context = RequestContext(route=RoutePolicy("default", 5.0, 60.0, None, 1024), client_host="203.0.113.9")
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    RequestIdGuard(trust_incoming=trust_incoming).on_request(scope, context)  # typed to never refuse
    return context


@pytest.mark.parametrize("value", [b"abc-123", b"A.b_c:d-9", b"x" * 128, b"4bf92f3577b34da6a3ce929d0e0e4736"])
def test_well_formed_request_id_is_kept(value: bytes) -> None:
    assert call_guard([(b"x-request-id", value)]).request_id == value.decode()


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-request-id", b"x" * 129)], id="too-long"),
        pytest.param([(b"x-request-id", b"")], id="empty"),
        pytest.param([(b"x-request-id", b"has space")], id="space"),
        pytest.param([(b"x-request-id", b"<script>")], id="angle-bracket"),
        pytest.param([(b"x-request-id", b"abc\n")], id="trailing-newline"),
        pytest.param([(b"x-request-id", b"abc\r\nx-injected: 1")], id="crlf-injection"),
        pytest.param([(b"x-request-id", "caf\u00e9".encode())], id="non-ascii"),
        pytest.param([(b"x-request-id", b"abc"), (b"x-request-id", b"abc")], id="two-headers"),
        pytest.param([], id="absent"),
    ],
)
def test_bad_request_id_is_replaced(headers: Headers) -> None:
    request_id_value = call_guard(headers).request_id
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_value)
    assert request_id_value.encode() not in [value for _, value in headers]


@given(st.lists(st.binary(max_size=140), max_size=3))
def test_request_id_is_always_safe_to_log(values: list[bytes]) -> None:
    request_id_value = call_guard([(b"x-request-id", value) for value in values]).request_id
    assert ACCEPTED_REQUEST_ID.fullmatch(request_id_value)


def test_untrusted_incoming_request_id_is_replaced() -> None:
    assert call_guard([(b"x-request-id", b"abc-123")], trust_incoming=False).request_id != "abc-123"


def test_trace_is_continued_and_tracestate_kept() -> None:
    context = call_guard([(b"traceparent", VALID), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")])
    assert parse_sent(context.traceparent)[0] == TRACE_ID.encode()
    assert context.tracestate == b"a=1,b=2"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"traceparent", b"garbage"), (b"tracestate", b"a=1")], id="invalid-traceparent"),
        pytest.param([(b"tracestate", b"a=1")], id="no-traceparent"),
        pytest.param([(b"traceparent", VALID), (b"traceparent", VALID), (b"tracestate", b"a=1")], id="two"),
    ],
)
def test_tracestate_is_dropped_with_a_fresh_trace(headers: Headers) -> None:
    context = call_guard(headers)
    assert parse_sent(context.traceparent)[0] != TRACE_ID.encode()
    assert context.tracestate == b""


def test_on_response_start_replaces_the_upstreams_request_id() -> None:
    context = call_guard([(b"x-request-id", b"client-id")])
    headers = [(b"x-request-id", b"upstream-1"), (b"content-type", b"text/plain"), (b"x-request-id", b"upstream-2")]
    RequestIdGuard(trust_incoming=True).on_response_start(context, headers)
    assert headers == [(b"content-type", b"text/plain"), (b"x-request-id", b"client-id")]
