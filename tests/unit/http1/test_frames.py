"""Frame boundaries of a WebSocket byte stream (http1/frames.py), however the bytes are cut."""

from __future__ import annotations

import os

import pytest

from guardproxy.http1.frames import CLOSE_TO_CLIENT, FrameCursor, close_to_server


def frame(payload: bytes, *, masked: bool = False, opcode: int = 0x2) -> bytes:
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes([0x80 | opcode, mask_bit | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, mask_bit | 127]) + size.to_bytes(8, "big")
    if masked:
        key = os.urandom(4)
        return head + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return head + payload


STREAM = b"".join(
    [
        frame(b"hello"),
        frame(b"", opcode=0x9),
        frame(b"x" * 200, masked=True),
        frame(b"y" * 70_000),
        frame(b"z" * 125, masked=True),
        frame(b"w" * 126),
    ]
)


def boundaries(stream: bytes, cuts: list[int]) -> list[bool]:
    cursor = FrameCursor()
    seen = []
    start = 0
    for end in [*cuts, len(stream)]:
        cursor.feed(stream[start:end])
        seen.append(cursor.at_boundary)
        start = end
    return seen


def test_a_whole_stream_ends_at_a_boundary() -> None:
    assert boundaries(STREAM, []) == [True]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 13, 1000, 65536])
def test_any_cutting_of_the_stream_ends_at_the_same_boundary(step: int) -> None:
    assert boundaries(STREAM, list(range(step, len(STREAM), step)))[-1] is True


def test_mid_header_and_mid_payload_are_not_boundaries() -> None:
    first = frame(b"hello")
    assert boundaries(first + first, [1, 3, len(first), len(first) + 2]) == [False, False, True, False, True]


def test_a_64_bit_length_is_followed_across_reads() -> None:
    big = frame(b"b" * 70_000)
    assert boundaries(big, [5, 9, 10, 50_000]) == [False, False, False, False, True]


def test_the_close_frames_say_going_away() -> None:
    assert CLOSE_TO_CLIENT == b"\x88\x02\x03\xe9"
    masked = close_to_server()
    assert masked[:2] == b"\x88\x82"
    key = masked[2:6]
    assert bytes(byte ^ key[index] for index, byte in enumerate(masked[6:])) == b"\x03\xe9"
