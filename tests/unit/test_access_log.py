"""The access log's own formatting (observability/access_log.py)."""

from __future__ import annotations

import datetime
import time

import pytest

from guardproxy.observability import access_log
from guardproxy.observability.access_log import _Clock


@pytest.mark.parametrize(
    ("ns", "expected"),
    [
        (1_795_000_000_000_000_000, "2026-11-18T11:06:40.000000Z"),
        (1_795_000_000_000_042_999, "2026-11-18T11:06:40.000042Z"),  # padded, truncated to µs
        (1_795_000_000_999_999_999, "2026-11-18T11:06:40.999999Z"),
        (1_795_000_001_000_000_000, "2026-11-18T11:06:41.000000Z"),  # the next second's prefix
    ],
)
def test_timestamps_are_iso_8601_utc_with_microseconds(monkeypatch: pytest.MonkeyPatch, ns: int, expected: str) -> None:
    clock = _Clock()
    monkeypatch.setattr(f"{access_log.__name__}.time.time_ns", lambda: 1_795_000_000_500_000_000)
    clock.now()  # a cached prefix from an earlier second must not leak into the next one
    monkeypatch.setattr(f"{access_log.__name__}.time.time_ns", lambda: ns)
    assert clock.now() == expected


def test_timestamps_follow_the_real_clock() -> None:
    stamp = _Clock().now()
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - time.time()) < 2
