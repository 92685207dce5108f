"""Metrics across worker processes (observability/multiprocess.py): the shared directory is chosen,
cleared and checked before any worker starts, and a scrape merges every worker's files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.observability.multiprocess import (
    MULTIPROC_DIR_ENV,
    MetricsDirectory,
    MetricsDirectoryError,
    aggregated_registry,
)


@pytest.fixture(autouse=True)
def _no_multiproc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare() sets the variable for the workers it is about to start; undone after each test.
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)


def test_one_worker_keeps_metrics_in_the_process() -> None:
    assert MetricsDirectory.prepare(None, workers=1) is None
    assert MULTIPROC_DIR_ENV not in os.environ


def test_several_workers_without_a_directory_get_a_private_one_removed_at_exit() -> None:
    directory = MetricsDirectory.prepare(None, workers=2)
    assert directory is not None
    assert directory.private
    assert directory.path.is_dir()
    assert oct(directory.path.stat().st_mode & 0o777) == "0o700"
    assert os.environ[MULTIPROC_DIR_ENV] == str(directory.path)
    directory.remove()
    assert not directory.path.exists()


def test_the_previous_runs_metric_files_are_cleared_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "counter_4242.db").write_bytes(b"stale")
    (tmp_path / "gauge_livesum_4242.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("not ours")
    directory = MetricsDirectory.prepare(tmp_path, workers=2)
    assert directory is not None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    directory.remove()  # not private: an operator's directory stays
    assert tmp_path.is_dir()


def test_the_configured_directory_beats_the_environment_and_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path / "from-env"))
    directory = MetricsDirectory.prepare(tmp_path / "configured" / "deeper", workers=3)
    assert directory is not None
    assert directory.path == tmp_path / "configured" / "deeper"
    assert directory.path.is_dir()
    assert os.environ[MULTIPROC_DIR_ENV] == str(directory.path)


def test_the_environment_directory_is_used_and_cleared_even_with_one_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prometheus-client was imported with the variable set: its values live in files whatever
    # the worker count, so the directory must exist and start empty.
    (tmp_path / "counter_1.db").write_bytes(b"stale")
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))
    directory = MetricsDirectory.prepare(None, workers=1)
    assert directory is not None
    assert directory.path == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_an_unusable_directory_is_named_in_one_line(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    with pytest.raises(MetricsDirectoryError, match=r"^metrics.multiprocess_dir: cannot use .*/file: File exists$"):
        MetricsDirectory.prepare(not_a_directory, workers=2)


def test_a_directory_that_cannot_be_created_is_refused_before_any_worker_starts() -> None:
    with pytest.raises(MetricsDirectoryError, match=r"cannot use /dev/null/metrics: Not a directory$"):
        MetricsDirectory.prepare(Path("/dev/null/metrics"), workers=2)


WORKER = textwrap.dedent(
    """
    import sys
    from guardproxy.observability.metrics import ProxyMetrics
    metrics = ProxyMetrics.for_this_process()
    assert metrics.multiprocess
    metrics.requests.labels("default", "GET", "2xx", "ok").inc(int(sys.argv[1]))
    metrics.sources().watch_in_flight(lambda: int(sys.argv[2]))
    metrics.ratelimit_fallback_active.set(int(sys.argv[3]))
    metrics.flush()
    """
)


def run_worker(directory: Path, requests: int, in_flight: int, fallback: int) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(requests), str(in_flight), str(fallback)],
        env={**os.environ, MULTIPROC_DIR_ENV: str(directory)},
    )
    assert process.wait(timeout=30) == 0
    return process.pid


def scrape(directory: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(aggregated_registry(str(directory), CollectorRegistry())).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_adds_up_every_workers_files_and_forgets_dead_workers_live_gauges(tmp_path: Path) -> None:
    directory = MetricsDirectory(tmp_path)
    first = run_worker(tmp_path, requests=3, in_flight=2, fallback=0)
    second = run_worker(tmp_path, requests=4, in_flight=5, fallback=1)
    labels = {"route": "default", "method": "GET", "status_class": "2xx", "outcome": "ok"}
    ok = ("guardproxy_requests_total", frozenset(labels.items()))
    found = scrape(tmp_path)
    assert found[ok] == 7
    assert found[("guardproxy_requests_in_flight", frozenset())] == 7
    assert found[("guardproxy_workers", frozenset())] == 2
    assert found[("guardproxy_ratelimit_fallback_active", frozenset())] == 1  # the max, not the sum
    directory.mark_dead(second)
    found = scrape(tmp_path)
    assert found[ok] == 7  # what a dead worker counted stays counted: totals never go back
    assert found[("guardproxy_requests_in_flight", frozenset())] == 2
    assert found[("guardproxy_workers", frozenset())] == 1
    assert found[("guardproxy_ratelimit_fallback_active", frozenset())] == 0
    directory.mark_dead(first)
    assert found[ok] == scrape(tmp_path)[ok]


def test_families_without_samples_are_still_described(tmp_path: Path) -> None:
    families = CollectorRegistry()
    Counter("example_decisions_total", "Decisions.", ["rule"], registry=families)
    text = generate_latest(aggregated_registry(str(tmp_path), families)).decode()
    assert "# HELP example_decisions_total Decisions.\n# TYPE example_decisions_total counter\n" in text
    assert "python_info{" in text


def test_a_worker_file_still_being_created_does_not_fail_the_scrape(tmp_path: Path) -> None:
    run_worker(tmp_path, requests=3, in_flight=0, fallback=0)
    # A worker starting up has created its file but not sized it yet: prometheus-client alone
    # fails the whole scrape on it ("cannot mmap an empty file").
    (tmp_path / "counter_999999.db").touch()
    labels = {"route": "default", "method": "GET", "status_class": "2xx", "outcome": "ok"}
    assert scrape(tmp_path)[("guardproxy_requests_total", frozenset(labels.items()))] == 3
