"""Retry-After as an upstream sends it (proxy/endpoints.py): delay-seconds or an HTTP-date
(RFC 9110 §10.2.3), never more than MAX_HOLD, and nothing at all for what is not understood."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardproxy.proxy.endpoints import MAX_HOLD, Endpoint, EndpointTarget, retry_after_seconds
from tests.support.mock_transport import MockTransport

# Tue, 14 Nov 2023 22:13:20 GMT on the wall clock.
NOW = 1_700_000_000.0


def retry_after(value: bytes) -> float:
    return retry_after_seconds([(b"content-type", b"text/plain"), (b"retry-after", value)], NOW)


def test_delay_seconds_are_taken_as_they_are() -> None:
    assert retry_after(b"30") == 30.0
    assert retry_after(b" 7 ") == 7.0


@pytest.mark.parametrize(
    "value",
    [
        b"Tue, 14 Nov 2023 22:13:50 GMT",  # IMF-fixdate, the form senders use
        b"Tuesday, 14-Nov-23 22:13:50 GMT",  # obsolete RFC 850 form, which recipients accept
        b"Tue Nov 14 22:13:50 2023",  # obsolete asctime form: no zone, and UTC all the same
    ],
)
def test_an_http_date_is_seconds_from_now(value: bytes) -> None:
    assert retry_after(value) == 30.0


def test_an_http_date_is_read_against_the_wall_clock_by_default() -> None:
    # 2023 is past for the real clock, 2100 is too far ahead: both bounds say which clock it read.
    assert retry_after_seconds([(b"retry-after", b"Tue, 14 Nov 2023 22:13:50 GMT")]) == 0.0
    assert retry_after_seconds([(b"retry-after", b"Fri, 01 Jan 2100 00:00:00 GMT")]) == MAX_HOLD


def test_a_date_in_the_past_is_no_delay() -> None:
    assert retry_after(b"Tue, 14 Nov 2023 22:13:19 GMT") == 0.0
    assert retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


def test_an_absurd_delay_or_date_is_capped() -> None:
    assert retry_after(b"999999999") == MAX_HOLD
    assert retry_after(b"9" * 5000) == MAX_HOLD
    assert retry_after(b"Fri, 31 Dec 9999 23:59:59 GMT") == MAX_HOLD


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"soon",
        b"-5",
        b"1e9",
        b"1.5",
        b"Mon, 99 Foo",
        b"Tue, 14 Nov 2023 25:00:00 GMT",  # hour out of range
        b"Tue, 32 Nov 2023 22:13:50 GMT",  # day out of range
        b"Mon, 01 Jan 99999 00:00:00 GMT",  # year past datetime's range
        b"Mon, 1 Jan 99999999999999999999999 00:00:00 GMT",  # past a C long
        b"Tue, 14 Nov 2023 22:13:50 +9999",  # offset of days
        b"\xff\xfe\x00",
    ],
)
def test_garbage_is_ignored(value: bytes) -> None:
    assert retry_after(value) == 0.0


def test_no_retry_after_is_no_delay() -> None:
    assert retry_after_seconds([(b"content-type", b"text/plain")], NOW) == 0.0
    assert retry_after_seconds([(b"x-retry-after", b"30")], NOW) == 0.0


@given(st.binary(max_size=64) | st.text(max_size=64).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_no_value_raises_or_leaves_the_bounds(value: bytes) -> None:
    assert 0.0 <= retry_after(value) <= MAX_HOLD


def test_a_503_with_a_date_holds_a_shared_endpoint_back_until_then() -> None:
    endpoint = Endpoint(EndpointTarget("a", "http://127.0.0.1:1"), MockTransport(), None)
    in_20_seconds = formatdate(time.time() + 20, usegmt=True).encode()
    endpoint.answered(503, [(b"retry-after", in_20_seconds)], lambda: 500.0, shared=True)
    assert 18.0 < endpoint.held_until - 500.0 <= 20.0  # (the date has whole seconds)
    assert not endpoint.available(517.0)
    assert endpoint.available(520.0)


def test_the_only_endpoint_is_not_held_back_by_a_date() -> None:
    endpoint = Endpoint(EndpointTarget("a", "http://127.0.0.1:1"), MockTransport(), None)
    in_20_seconds = formatdate(time.time() + 20, usegmt=True).encode()
    endpoint.answered(503, [(b"retry-after", in_20_seconds)], lambda: 500.0, shared=False)
    assert endpoint.held_until == 0.0
