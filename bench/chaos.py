"""A chaos run: bench/load.py's scenario mix against guardproxy with two workers and a Redis of
its own, while the run, one phase after the other, kills the upstream and starts it again, kills
Redis (and later starts it again), reloads the configuration with SIGHUP, and SIGKILLs a worker.
Then it checks:

- every answer was one the mix expects (`ok`, a 429 on the limited path) or one of the problem
  types the faults explain (upstream-unavailable / upstream-bad-response while the upstream is
  down, upstream-circuit-open until its circuit's next probe); a broken exchange (no answer at
  all) only for a request in flight when a process was killed under it (the upstream, or the
  worker serving it);
- no lost log lines: every answered request's X-Request-ID is in the access log, except requests
  a SIGKILLed worker answered in its last moment (its buffer dies with it: counted, reported);
- no worker left dead: the supervisor runs as many workers as configured at the end;
- readiness is back within `--ready-within` seconds after the upstream returns and after the
  worker is killed; the reload was applied by every worker.

    scripts/chaos                      # the CI length, about a minute
    scripts/chaos --phase-seconds 20   # longer phases
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.load import LIMITED_RULE, Report, run_load  # noqa: E402 - after sys.path has the checkout
from bench.stack import Stack, wait_for  # noqa: E402

WORKERS = 2
# Problem types a fault explains, by the fault.
UPSTREAM_DOWN = {"problem:upstream-unavailable", "problem:upstream-bad-response"}
# The upstream's circuit opens while it is down and lets a probe through at the first passing
# health check once it is back, at the latest `upstream.circuit_breaker.open_for` seconds after
# the last failure: until then guardproxy answers this itself, at once.
CIRCUIT_OPEN = "problem:upstream-circuit-open"
CIRCUIT_OPEN_FOR = 2.0
# A request broken (no answer) by a killed process it was in flight on may show as any of these.
BROKEN = {"error:RemoteProtocolError", "error:ReadError", "error:ConnectError", "error:WriteError"}
# The access log is written in blocks; a SIGKILLed worker's last block is lost with it.
KILL_WINDOW_SECONDS = 2.0


def chaos_config(upstream_url: str) -> dict[str, Any]:
    return {
        "upstream": {
            "url": upstream_url,
            "health_check": {"interval": 0.5, "timeout": 0.5},
            "circuit_breaker": {"open_for": CIRCUIT_OPEN_FOR},
        },
        "rate_limit": {"key_prefix": "chaos:", "rules": [LIMITED_RULE], "breaker_cooldown": 1.0},
    }


@dataclass
class Event:
    name: str
    at: float  # time.time()
    until: float | None = None


@dataclass
class Findings:
    events: list[Event] = field(default_factory=list)
    ready_after: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def mark(self, name: str) -> Event:
        event = Event(name, time.time())
        self.events.append(event)
        print(f"chaos: {name}", flush=True)
        return event

    def window(self, name: str) -> tuple[float, float]:
        event = next(event for event in self.events if event.name == name)
        return event.at, event.until if event.until is not None else event.at + KILL_WINDOW_SECONDS


def reload_count(stack: Stack, result: str) -> float:
    text = httpx.get(f"{stack.admin_url}/metrics", timeout=5).text
    prefix = f'guardproxy_config_reloads_total{{result="{result}"}}'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def faults(stack: Stack, findings: Findings, phase: float, ready_within: float) -> None:
    """The timeline, run in a thread beside the load."""
    time.sleep(phase)
    down = findings.mark("upstream killed")
    stack.kill("upstream")
    time.sleep(phase)
    stack.start_upstream()
    down.until = time.time()
    findings.ready_after["upstream restarted"] = wait_for(stack.ready, ready_within, "ready after the upstream")
    time.sleep(phase)
    redis_down = findings.mark("redis killed")
    stack.kill("redis")
    time.sleep(phase)
    stack.start_redis()
    redis_down.until = time.time()
    findings.mark("reload")
    applied = reload_count(stack, "applied")
    stack.write_config(cors={"origins": ["https://chaos.example"]})
    stack.signal_guardproxy(signal.SIGHUP)
    wait_for(lambda: reload_count(stack, "applied") >= applied + WORKERS, ready_within, "every worker reloaded")
    time.sleep(phase)
    victim = stack.worker_pids()[0]
    findings.mark("worker killed")
    os.kill(victim, signal.SIGKILL)
    findings.ready_after["worker killed"] = wait_for(
        lambda: len(stack.worker_pids()) == WORKERS and victim not in stack.worker_pids() and stack.ready(),
        ready_within,
        "a new worker serving",
    )
    time.sleep(phase)


def judge(report: Report, findings: Findings, log_path: Path) -> dict[str, Any]:
    upstream_start, upstream_end = findings.window("upstream killed")
    kill_start, kill_end = findings.window("worker killed")

    def in_window(start: float, end: float, started_at: float, finished_at: float) -> bool:
        return started_at <= end + 1.0 and finished_at >= start

    explained: dict[str, int] = {}
    unexplained: dict[str, int] = {}
    for answer in report.answers:
        if answer.outcome in ("ok", "limited"):
            continue
        started_at = answer.finished_at - answer.seconds
        during_upstream = in_window(upstream_start, upstream_end, started_at, answer.finished_at)
        during_kill = in_window(kill_start, kill_end, started_at, answer.finished_at)
        while_circuit_open = in_window(upstream_start, upstream_end + CIRCUIT_OPEN_FOR, started_at, answer.finished_at)
        ok = (
            (answer.outcome in UPSTREAM_DOWN and during_upstream)
            or (answer.outcome == CIRCUIT_OPEN and while_circuit_open)
            or (answer.outcome in BROKEN and (during_upstream or during_kill))
        )
        bucket = explained if ok else unexplained
        bucket[answer.outcome] = bucket.get(answer.outcome, 0) + 1

    logged = set()
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"event":"request"' in line:
            logged.add(json.loads(line).get("request_id"))
    answered = [answer for answer in report.answers if not answer.outcome.startswith("error:")]
    missing = [answer for answer in answered if answer.request_id not in logged]
    missing_at_kill = [a for a in missing if kill_start - KILL_WINDOW_SECONDS <= a.finished_at <= kill_end]
    lost = len(missing) - len(missing_at_kill)
    if unexplained:
        findings.failures.append(f"unexpected answers: {unexplained}")
    if lost:
        findings.failures.append(f"{lost} answered requests have no access-log line")
    return {
        "requests": len(report.answers),
        "outcomes": report.outcomes(),
        "explained_by_faults": explained,
        "unexplained": unexplained,
        "log_lines_missing": lost,
        "log_lines_lost_with_the_killed_worker": len(missing_at_kill),
        "ready_after_seconds": {name: round(seconds, 2) for name, seconds in findings.ready_after.items()},
        "latency_ms_ok": report.latency_ms(),
    }


async def chaos(stack: Stack, phase: float, ready_within: float, concurrency: int) -> tuple[Report, Findings]:
    findings = Findings()
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(stack.url, duration=3600, concurrency=concurrency, stop=stop))
    try:
        await asyncio.to_thread(faults, stack, findings, phase, ready_within)
    except RuntimeError as exc:
        findings.failures.append(str(exc))
    finally:
        stop.set()
        report = await load
    return report, findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase-seconds", type=float, default=5.0, help="seconds between faults [5]")
    parser.add_argument("--ready-within", type=float, default=10.0, help="readiness deadline after a fault [10]")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "chaos")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.workdir.exists():
        for stale in args.workdir.iterdir():
            stale.unlink()
    started = time.monotonic()
    with Stack.start(args.workdir, workers=WORKERS, config=chaos_config, redis=True) as stack:
        report, findings = asyncio.run(chaos(stack, args.phase_seconds, args.ready_within, args.concurrency))
        workers_at_end = len(stack.worker_pids())
        if workers_at_end != WORKERS:
            findings.failures.append(f"{workers_at_end} workers running at the end, not {WORKERS}")
        exit_code = stack.stop_guardproxy()  # SIGTERM: the workers write what they buffered
        if exit_code != 0:
            findings.failures.append(f"guardproxy exited with {exit_code}")
    result = judge(report, findings, stack.log_path)
    result.update(
        seconds=round(time.monotonic() - started, 1), workers_at_end=workers_at_end, failures=findings.failures
    )
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if findings.failures else 0


if __name__ == "__main__":
    sys.exit(main())
