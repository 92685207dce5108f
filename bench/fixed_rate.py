"""Latency at a fixed request rate (open loop), with h2load: what a proxy adds at 2k and 5k req/s.

wrk at a fixed concurrency is a closed loop: each connection waits for its answer before it
sends again, so a slower proxy is simply offered less load and its latency figures say how queues
grow. Here requests arrive at a set rate whatever the proxy does, as traffic does. h2load
(Debian's nghttp2-client) runs `--clients` HTTP/1.1 connections, each sending `rate / clients`
requests a second (`--rps`), opened out of phase so that the requests are spread evenly, and
logs every request's latency (`--log-file`). With many connections each at a low rate a
connection is idle nearly all the time, so a slow answer delays little else; h2load still
measures from when a request was sent, not from when it was due, so a proxy that falls behind
the rate looks better than it is: the achieved rate is reported beside the figures for that
reason.

The added latency of a proxy is its percentile minus the same percentile measured directly
against the upstream in the same round, so what the upstream and the load generator cost on
this machine cancels out.
"""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PERCENTILES = (50.0, 99.0, 99.9)


@dataclass
class RateResult:
    """One target at one rate: a (p50, p99, p99.9) in ms and the achieved rate per round."""

    percentiles: list[tuple[float, ...]] = field(default_factory=list)
    achieved: list[float] = field(default_factory=list)


def h2load_present() -> bool:
    if shutil.which("h2load") is None:
        print("bench: h2load is not on PATH (apt-get install nghttp2-client)", file=sys.stderr)
        return False
    return True


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def run_h2load(url: str, rate: int, duration: float, clients: int, log: Path) -> tuple[list[float], float]:
    """Latencies in ms of the requests sent at `rate` requests a second for `duration` seconds
    (less the first half second, while connections open), and the rate achieved."""
    per_client = max(1, round(rate / clients))
    # Connections are opened a few a millisecond across one client's period, so that their
    # request timers are out of phase: all at once, every client would send in the same
    # millisecond, a burst of `clients` requests per period instead of a steady rate.
    period_ms = 1000 / per_client
    command = [
        "h2load", "--h1", "-t1", f"-c{clients}", f"-n{int(per_client * clients * duration)}",
        f"--rps={per_client}", f"-r{max(1, math.ceil(clients / period_ms))}", "--rate-period=1ms",
        f"--log-file={log}", url,
    ]  # fmt: skip
    log.unlink(missing_ok=True)
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"h2load failed against {url}: {completed.stderr or completed.stdout}")
    rows = []
    for row in log.read_text().splitlines():
        started, status, micros = row.split("\t")[:3]
        if not status.startswith("2"):
            raise RuntimeError(f"{url}: status {status} during the fixed-rate run")
        rows.append((int(started), int(micros) / 1000))
    if not rows:
        raise RuntimeError(f"{url}: no request answered during the fixed-rate run")
    first, last = min(start for start, _ in rows), max(start for start, _ in rows)
    steady = sorted(latency for start, latency in rows if start >= first + 500_000)
    seconds = (last - first - 500_000) / 1e6
    return steady, len(steady) / seconds if seconds > 0 else 0.0


def measure(url: str, rate: int, duration: float, clients: int, log: Path, result: RateResult) -> None:  # noqa: PLR0917
    latencies, achieved = run_h2load(url, rate, duration, clients, log)
    result.percentiles.append(tuple(percentile(latencies, pct) for pct in PERCENTILES))
    result.achieved.append(achieved)


def added(result: RateResult, direct: RateResult) -> list[float]:
    """Median over rounds of (this percentile - the direct run's percentile in that round)."""
    pairs = list(zip(result.percentiles, direct.percentiles, strict=True))
    return [
        statistics.median(mine[index] - theirs[index] for mine, theirs in pairs) for index in range(len(PERCENTILES))
    ]
