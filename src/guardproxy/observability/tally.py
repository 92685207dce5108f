"""The per-request side of the metrics: plain counters that `ProxyMetrics.flush` moves into
prometheus-client. `guards/metrics.py` fills them; everything runs on the event loop thread, and
so does the flush, so no lock is needed."""

from __future__ import annotations

from typing import Final

KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# From a cached response (1 ms) to a slow report (60 s): API latencies, not page loads.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# A response that never started (status 0) counts as a server error.
STATUS_CLASSES: Final = {status: f"{status // 100}xx" for status in range(100, 600)}


def bucket(seconds: float) -> int:
    """The index of the first bound >= seconds (Prometheus' `le` buckets), len(DURATION_BUCKETS)
    for +Inf. A loop from the smallest bound, not bisect: most requests end in the first few
    buckets, and compiled, each step is a comparison of two C doubles."""
    index = 0
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return index
        index += 1
    return index


class RouteTally:
    """What one route's requests added up to since the last flush. Histograms are kept as
    counts per bucket (index len(DURATION_BUCKETS) is +Inf) plus the sum of the values."""

    __slots__ = (
        "duration",
        "duration_sum",
        "request_bytes",
        "requests",
        "response_bytes",
        "upstream",
        "upstream_sum",
    )

    def __init__(self) -> None:
        # (method, status class, outcome) -> requests
        self.requests: dict[tuple[str, str, str], int] = {}
        self.duration = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.upstream = [0] * (len(DURATION_BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.request_bytes = 0
        self.response_bytes = 0
