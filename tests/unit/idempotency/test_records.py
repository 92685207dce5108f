"""The state machine of one key, without I/O: what a request meets, and what may be stored."""

from __future__ import annotations

import pytest

from guardproxy.idempotency.records import (
    CorruptEntryError,
    Disposition,
    StoredResponse,
    Verdict,
    decide,
    decode_done,
    disposition,
    encode_done,
    new_lock,
    replay_headers,
)

FP, OTHER = b"f" * 16, b"o" * 16
RESPONSE = StoredResponse(201, [(b"content-type", b"application/json"), (b"x-bin", "é\x7f".encode("latin-1"))], b"{}")


def test_a_stored_response_round_trips_byte_for_byte() -> None:
    assert decode_done(encode_done(FP, RESPONSE)) == RESPONSE
    empty = StoredResponse(204, [], b"")
    assert decode_done(encode_done(FP, empty)) == empty


def test_locks_are_unique_and_carry_the_fingerprint() -> None:
    first, second = new_lock(FP), new_lock(FP)
    assert first != second
    assert first[1:17] == FP == second[1:17]
    with pytest.raises(ValueError, match="16 bytes"):
        new_lock(b"short")


def test_what_a_request_meets() -> None:
    assert decide(None, FP) == (Verdict.PROCEED, None)
    assert decide(new_lock(FP), FP) == (Verdict.CONFLICT, None)
    assert decide(new_lock(OTHER), FP) == (Verdict.MISMATCH, None)
    assert decide(encode_done(FP, RESPONSE), FP) == (Verdict.REPLAY, RESPONSE)
    assert decide(encode_done(OTHER, RESPONSE), FP) == (Verdict.MISMATCH, None)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"X" + FP,
        b"L" + b"short",
        b"D" + FP,
        b"D" + FP + b"\x00\xc8\x00\x00\x00\xff{}",
        b"D" + FP + b"\x00\x01\x00\x00\x00\x00",
    ],
)
def test_a_value_this_code_did_not_write_is_corrupt_not_a_crash(value: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        decide(value, FP)


def test_a_stored_head_that_is_not_a_field_list_is_corrupt() -> None:
    head = b'{"not": "a list"}'
    value = b"D" + FP + b"\x00\xc8" + len(head).to_bytes(4, "big") + head
    with pytest.raises(CorruptEntryError):
        decode_done(value)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Disposition.STORED),
        (201, Disposition.STORED),
        (204, Disposition.STORED),
        (303, Disposition.STORED),
        (400, Disposition.STORED),
        (402, Disposition.STORED),  # a declined payment: final, and the upstream acted
        (404, Disposition.STORED),
        (422, Disposition.STORED),
        (408, Disposition.TRANSIENT),
        (409, Disposition.TRANSIENT),
        (425, Disposition.TRANSIENT),
        (429, Disposition.TRANSIENT),
        (500, Disposition.SERVER_ERROR),
        (503, Disposition.SERVER_ERROR),
    ],
)
def test_which_upstream_answers_are_kept(status: int, expected: Disposition) -> None:
    assert disposition(status, from_upstream=True, complete=True, too_large=False) is expected


def test_guardproxy_answers_cut_short_and_oversized_responses_are_not_kept() -> None:
    assert disposition(502, from_upstream=False, complete=True, too_large=False) is Disposition.NOT_UPSTREAM
    assert disposition(200, from_upstream=True, complete=False, too_large=False) is Disposition.INCOMPLETE
    assert disposition(200, from_upstream=True, complete=True, too_large=True) is Disposition.TOO_LARGE


def test_a_replay_says_so_and_has_its_own_content_length() -> None:
    stored = StoredResponse(200, [(b"content-type", b"text/plain"), (b"content-length", b"999")], b"abc")
    assert replay_headers(stored) == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"3"),
        (b"idempotent-replayed", b"true"),
    ]


@pytest.mark.parametrize("status", [204, 304])
def test_a_replayed_204_or_304_has_no_content_length(status: int) -> None:
    assert replay_headers(StoredResponse(status, [(b"etag", b'"x"')], b"")) == [
        (b"etag", b'"x"'),
        (b"idempotent-replayed", b"true"),
    ]
