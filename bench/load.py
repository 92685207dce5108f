"""A load generator with a scenario mix, for soak and chaos runs (not for throughput figures:
bench/run.py and wrk do that). Closed loop: `--concurrency` clients, each sending one request
after the other, picking a scenario by weight:

  small      GET /echo: a small JSON answer
  large_gzip GET /payload?size=61440 with Accept-Encoding: gzip: 60 KB of JSON, compressed
  upload     POST /echo with a 64 KB body; the upstream's digest of it is checked
  sse        GET /sse: three server-sent events, read as they come
  limited    GET /echo/limited/x: a path with a tight rate-limit rule, so mostly 429s

Every answer is checked, not only counted: a scenario's expected outcome is `ok` (and `limited`
for a 429 rate-limited problem on the limited path); anything else is counted by what it was:
`problem:<type>` for guardproxy's own RFC 9457 answers, `status:<code>` for other statuses,
`error:<exception>` for a broken exchange and `bad_body` for a body that is not what was sent.
Every request carries an X-Request-ID (`load-<n>`), so a run's answers can be matched with the
access log (scripts/chaos does).

    .venv/bin/python bench/load.py --duration 10 --concurrency 16   # starts its own upstream
                                                                    # app and guardproxy
    .venv/bin/python bench/load.py --url http://127.0.0.1:8080      # a running guardproxy in
                                                                    # front of tests/support/upstream_app.py
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
UPLOAD = random.Random(7).randbytes(64 * 1024)
UPLOAD_SHA256 = hashlib.sha256(UPLOAD).hexdigest()
LARGE_SIZE = 61440
RATE_LIMITED = "urn:guardproxy:problem:rate-limited"
# The rule the `limited` scenario runs into (the self-contained guardproxy has it; give a
# guardproxy of your own the same, or expect `ok` instead of `limited` there).
LIMITED_RULE = {"name": "load-limited", "rate": "20/second", "path": "/echo/limited/*"}
WEIGHTS = {"small": 50, "large_gzip": 15, "upload": 10, "sse": 5, "limited": 20}
PERCENTILES = (50, 90, 99)


@dataclass
class Answer:
    request_id: str
    scenario: str
    outcome: str
    seconds: float
    finished_at: float


@dataclass
class Report:
    answers: list[Answer] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    gzip_answers: int = 0

    def outcomes(self) -> dict[str, dict[str, int]]:
        by_scenario: dict[str, Counter[str]] = {}
        for answer in self.answers:
            by_scenario.setdefault(answer.scenario, Counter())[answer.outcome] += 1
        return {scenario: dict(counts) for scenario, counts in sorted(by_scenario.items())}

    def unexpected(self, allowed: set[str] = frozenset()) -> Counter[str]:  # type: ignore[assignment]
        """Outcomes other than ok / limited (and `allowed`), with their counts."""
        return Counter(answer.outcome for answer in self.answers if answer.outcome not in {"ok", "limited", *allowed})

    def latency_ms(self) -> dict[str, dict[str, float]]:
        figures: dict[str, dict[str, float]] = {}
        for scenario in sorted({answer.scenario for answer in self.answers}):
            times = sorted(a.seconds * 1000 for a in self.answers if a.scenario == scenario and a.outcome == "ok")
            if not times:
                continue
            last = len(times) - 1
            figures[scenario] = {f"p{p}": round(times[min(last, len(times) * p // 100)], 2) for p in PERCENTILES}
            figures[scenario]["max"] = round(times[-1], 2)
        return figures

    def summary(self) -> dict[str, object]:
        elapsed = max((a.finished_at for a in self.answers), default=self.started_at) - self.started_at
        return {
            "requests": len(self.answers),
            "seconds": round(elapsed, 1),
            "rate": round(len(self.answers) / elapsed, 1) if elapsed > 0 else 0.0,
            "gzip_share_of_large": round(self.gzip_answers / max(1, self._count("large_gzip")), 3),
            "outcomes": self.outcomes(),
            "unexpected": dict(self.unexpected()),
            "latency_ms_ok": self.latency_ms(),
        }

    def _count(self, scenario: str) -> int:
        return sum(1 for answer in self.answers if answer.scenario == scenario and answer.outcome == "ok")


def _problem_or_status(response: httpx.Response) -> str:
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            kind = str(json.loads(response.content).get("type", "?"))
        except ValueError:
            return "bad_body"
        return "problem:" + kind.removeprefix("urn:guardproxy:problem:")
    return f"status:{response.status_code}"


class Load:
    def __init__(self, base_url: str, report: Report, *, seed: int = 1) -> None:
        self.base_url = base_url.rstrip("/")
        self.report = report
        self.random = random.Random(seed)
        self.sequence = 0
        self.scenarios: dict[str, Callable[[httpx.AsyncClient, dict[str, str]], Awaitable[str]]] = {
            "small": self.small,
            "large_gzip": self.large_gzip,
            "upload": self.upload,
            "sse": self.sse,
            "limited": self.limited,
        }

    async def small(self, client: httpx.AsyncClient, headers: dict[str, str]) -> str:
        response = await client.get(f"{self.base_url}/echo", headers=headers)
        if response.status_code != 200:
            return _problem_or_status(response)
        return "ok" if response.json().get("method") == "GET" else "bad_body"

    async def large_gzip(self, client: httpx.AsyncClient, headers: dict[str, str]) -> str:
        url = f"{self.base_url}/payload?size={LARGE_SIZE}"
        response = await client.get(url, headers={**headers, "Accept-Encoding": "gzip"})
        if response.status_code != 200:
            return _problem_or_status(response)
        if response.headers.get("content-encoding") == "gzip":
            self.report.gzip_answers += 1
        return "ok" if len(response.content) == LARGE_SIZE else "bad_body"

    async def upload(self, client: httpx.AsyncClient, headers: dict[str, str]) -> str:
        response = await client.post(f"{self.base_url}/echo", content=UPLOAD, headers=headers)
        if response.status_code != 200:
            return _problem_or_status(response)
        return "ok" if response.json().get("body_sha256") == UPLOAD_SHA256 else "bad_body"

    async def sse(self, client: httpx.AsyncClient, headers: dict[str, str]) -> str:
        async with client.stream("GET", f"{self.base_url}/sse?n=3&interval=0.05", headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                return _problem_or_status(response)
            events = [line async for line in response.aiter_lines() if line.startswith("data:")]
        return "ok" if events == [f"data: event {index}" for index in range(3)] else "bad_body"

    async def limited(self, client: httpx.AsyncClient, headers: dict[str, str]) -> str:
        response = await client.get(f"{self.base_url}/echo/limited/x", headers=headers)
        if response.status_code == 429:
            outcome = _problem_or_status(response)
            return "limited" if outcome == "problem:rate-limited" and "retry-after" in response.headers else outcome
        return "ok" if response.status_code == 200 else _problem_or_status(response)

    async def client_loop(self, until: float, stop: asyncio.Event) -> None:
        names, weights = list(WEIGHTS), list(WEIGHTS.values())
        async with httpx.AsyncClient(timeout=15) as client:
            while time.monotonic() < until and not stop.is_set():
                scenario = self.random.choices(names, weights)[0]
                self.sequence += 1
                request_id = f"load-{self.sequence}"
                started = time.monotonic()
                try:
                    outcome = await self.scenarios[scenario](client, {"X-Request-ID": request_id})
                except httpx.HTTPError as exc:
                    outcome = f"error:{type(exc).__name__}"
                    await asyncio.sleep(0.05)  # a refused connection must not become a busy loop
                self.report.answers.append(
                    Answer(request_id, scenario, outcome, time.monotonic() - started, time.time())
                )


async def run_load(
    base_url: str, *, duration: float, concurrency: int, stop: asyncio.Event | None = None, seed: int = 1
) -> Report:
    """Send the mix for `duration` seconds (or until `stop` is set) from `concurrency` clients."""
    report = Report()
    load = Load(base_url, report, seed=seed)
    until = time.monotonic() + duration
    stop = stop or asyncio.Event()
    await asyncio.gather(*(load.client_loop(until, stop) for _ in range(concurrency)))
    return report


def self_contained_config(upstream_url: str) -> dict[str, object]:
    return {"upstream": {"url": upstream_url}, "rate_limit": {"rules": [LIMITED_RULE]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running guardproxy (else one is started, with its upstream)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.stack import Stack  # noqa: PLC0415 - after sys.path has the checkout

    if args.url:
        report = asyncio.run(run_load(args.url, duration=args.duration, concurrency=args.concurrency))
    else:
        with Stack.start(ROOT / "build" / "load", workers=1, config=self_contained_config) as stack:
            report = asyncio.run(run_load(stack.url, duration=args.duration, concurrency=args.concurrency))
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if report.unexpected() else 0


if __name__ == "__main__":
    sys.exit(main())
