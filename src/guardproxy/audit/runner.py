"""Runs one audit within fixed bounds: a first request that must be answered (else a clear
error), then every probe under one overall deadline and one request budget.

A probe still running at the deadline is cancelled and its checks are reported not observable;
so an audit ends on time even against a target that stalls half-way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from guardproxy.audit.checks import Finding, Status
from guardproxy.audit.probes import BACKGROUND, LAST, QUICK, Probe
from guardproxy.audit.report import Report
from guardproxy.audit.session import Bounds, Session, Target

# Probes in flight at once: enough to finish quickly, few enough to stay polite.
PARALLEL_PROBES = 4


class AuditError(Exception):
    """The target cannot be audited at all (unreachable, not HTTP, not a URL)."""


@dataclass(frozen=True)
class AuditOptions:
    headers: Sequence[tuple[str, str]] = ()
    methods: Sequence[str] = ()
    timeout: float = 5.0  # seconds for one request (connect, and each read)
    deadline: float = 25.0  # seconds for the whole audit of one URL (30 s with start and teardown)
    max_requests: int = 200
    rate: float = 100.0  # requests started per second, at most
    verify_tls: bool = True
    bounds: Bounds = field(default_factory=Bounds)


async def run_audit(url: str, options: AuditOptions | None = None) -> Report:
    options = options or AuditOptions()
    try:
        target = Target.parse(url)
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + options.deadline
    async with Session(
        target,
        headers=options.headers,
        methods=options.methods,
        max_requests=options.max_requests,
        rate=options.rate,
        timeout=options.timeout,
        verify_tls=options.verify_tls,
        bounds=options.bounds,
    ) as session:
        first = await session.request("GET", label=f"GET {url}")
        if not first.answered:
            raise AuditError(f"{url}: {first.error}")
        limit = asyncio.Semaphore(PARALLEL_PROBES)

        async def quick(probe: Probe) -> list[Finding]:
            async with limit:
                return await _bounded(probe, session, deadline)

        background = [asyncio.ensure_future(_bounded(probe, session, deadline)) for probe in BACKGROUND]
        try:
            results = await asyncio.gather(*(quick(probe) for probe in QUICK))
            for probe in LAST:
                results.append(await _bounded(probe, session, deadline))
            results += await asyncio.gather(*background)
        finally:
            for task in background:
                task.cancel()
    findings = [finding for result in results for finding in result]
    return Report.build(url, findings, duration=time.monotonic() - started, requests=session.budget.used)


async def _bounded(probe: Probe, session: Session, deadline: float) -> list[Finding]:
    """The probe's findings, or "not observable" for its checks if it is still running at
    `deadline` (on the event loop's clock)."""
    try:
        async with asyncio.timeout_at(deadline):
            evidence = await probe.gather(session)
    except TimeoutError:
        reason = f"the {probe.name} probe did not finish within the audit's deadline"
        return [Finding(check, Status.NOT_OBSERVABLE, reason) for check in probe.checks]
    return probe.judge(evidence)
