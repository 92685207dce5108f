"""Metrics across `--workers N` processes: prometheus-client's multiprocess mode.

Every worker serves the same admin socket, so any of them may answer a scrape; each one writes
its metrics to files of its own in one shared directory, and a scrape merges every file there.
prometheus-client picks file-backed values when it is imported with PROMETHEUS_MULTIPROC_DIR set,
so the supervisor prepares the directory and sets the variable before it starts a worker.

The files outlive their process: counters of an exited worker keep counting in the totals (so
totals never go backwards when a worker is restarted), its `live*` gauges are removed by
`mark_dead`, and a new start clears the directory, since the previous run's totals are not
this run's.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

_REMOVE_ATTEMPTS = 5

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDirectoryError(Exception):
    """The shared metrics directory cannot be used; phrased for the operator."""


@dataclass(frozen=True)
class MetricsDirectory:
    """The directory the workers share metrics through; `private` when guardproxy created it."""

    path: Path
    private: bool = False

    @classmethod
    def prepare(cls, configured: Path | None, *, workers: int) -> MetricsDirectory | None:
        """In the supervisor, before any worker starts: choose the directory (the configured one,
        else PROMETHEUS_MULTIPROC_DIR, else a private temporary one), clear what a previous run
        left there and point PROMETHEUS_MULTIPROC_DIR at it for the workers. None: one worker and
        no directory in the environment, so metrics stay in the process (cheaper)."""
        from_env = os.environ.get(MULTIPROC_DIR_ENV)
        if workers == 1 and not from_env:
            return None
        chosen = configured or (Path(from_env) if from_env else None)
        if chosen is None:
            directory = cls(Path(tempfile.mkdtemp(prefix="guardproxy-metrics-")), private=True)
        else:
            directory = cls(chosen)
            directory.clear()
        os.environ[MULTIPROC_DIR_ENV] = str(directory.path)
        return directory

    def clear(self) -> None:
        """Remove the metric files (and only those: the directory may hold other things)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in self.path.glob("*.db"):
                stale.unlink()
            probe = self.path / f".guardproxy-write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise MetricsDirectoryError(f"metrics.multiprocess_dir: cannot use {self.path}: {exc.strerror}") from None

    def mark_dead(self, pid: int) -> None:
        """A worker exited: its live gauges (in flight, fallback active) stop counting."""
        multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def remove(self) -> None:
        if not self.private:
            return
        # A file that appears while the tree is being removed (an exiting worker's last write
        # racing the removal) makes one pass fail quietly; a few passes settle it.
        for _ in range(_REMOVE_ATTEMPTS):
            shutil.rmtree(self.path, ignore_errors=True)
            if not os.path.exists(self.path):
                return
            time.sleep(0.05)


class _Aggregated(Collector):
    """Every worker's files merged, plus each family no worker has written a sample of yet
    (a labelled counter before its first event): the same families as with one worker."""

    def __init__(self, path: str, declared: Iterable[Metric]) -> None:
        self._path = Path(path)
        self._declared = list(declared)

    def collect(self) -> Iterable[Metric]:
        # A worker that is starting creates its file empty and sizes it a moment later, and the
        # supervisor removes a dead worker's: a scrape in between must not fail (prometheus-client
        # cannot mmap an empty file). Such a file holds nothing yet, or nothing any more.
        for attempt in range(3):
            files = [str(path) for path in self._path.glob("*.db") if _has_content(path)]
            try:
                merged = list(multiprocess.MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
                break
            except (FileNotFoundError, ValueError, struct.error):
                if attempt == 2:
                    raise
        present = {metric.name for metric in merged}
        return merged + [metric for metric in self._declared if metric.name not in present]


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def aggregated_registry(path: str, families: CollectorRegistry) -> CollectorRegistry:
    """What /metrics renders with several workers: the merged files and `python_info`. The
    per-process collectors are left out: they would describe whichever worker answered."""
    declared = [Metric(metric.name, metric.documentation, metric.type) for metric in families.collect()]
    registry = CollectorRegistry()
    registry.register(_Aggregated(path, declared))
    PlatformCollector(registry=registry)
    return registry


class WorkerProcessMetrics:
    """The process_* metrics for a group of workers: each worker copies its own figures (from
    prometheus-client's process collector) into shared metrics at every flush. CPU time is a sum
    over every worker that ever ran, so it only goes up; memory and descriptors are sums over
    the live workers; the start time is the oldest live worker's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = ProcessCollector(registry=None)
        self._cpu_seen = 0.0
        self._cpu = Counter(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds, summed over every worker.",
            registry=registry,
        )
        self._gauges = {
            "process_resident_memory_bytes": Gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes, summed over live workers.",
                registry=registry,
                multiprocess_mode="livesum",
            ),
            "process_virtual_memory_bytes": Gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes, summed over live workers.",
                registry=registry,
                multiprocess_mode="livesum",
            ),
            "process_open_fds": Gauge(
                "process_open_fds",
                "Number of open file descriptors, summed over live workers.",
                registry=registry,
                multiprocess_mode="livesum",
            ),
            "process_max_fds": Gauge(
                "process_max_fds",
                "Maximum number of open file descriptors of one worker.",
                registry=registry,
                multiprocess_mode="livemin",
            ),
            "process_start_time_seconds": Gauge(
                "process_start_time_seconds",
                "Start time of the oldest live worker since unix epoch in seconds.",
                registry=registry,
                multiprocess_mode="livemin",
            ),
        }

    def update(self) -> None:
        for family in self._source.collect():
            value = family.samples[0].value
            if family.name == "process_cpu_seconds":
                if value > self._cpu_seen:
                    self._cpu.inc(value - self._cpu_seen)
                    self._cpu_seen = value
            elif family.name in self._gauges:
                self._gauges[family.name].set(value)
