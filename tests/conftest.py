"""Shared fixtures: a real upstream app process and guardproxy started through its CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import Guardproxy, UpstreamProcess, start_guardproxy, start_upstream_app


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamProcess]:
    app = start_upstream_app()
    yield app
    app.stop()


@pytest.fixture(scope="session")
def proxy_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("guardproxy-logs")


@pytest.fixture(scope="session")
def proxy(upstream: UpstreamProcess, proxy_log_dir: Path) -> Iterator[Guardproxy]:
    """guardproxy with its defaults in front of the upstream app, shared by read-only tests."""
    gp = start_guardproxy(upstream.url, log_dir=proxy_log_dir)
    yield gp
    assert gp.stop() == 0, gp.log_text()


@pytest.fixture
def start_proxy(proxy_log_dir: Path) -> Iterator[Callable[..., Guardproxy]]:
    """Start a guardproxy of the test's own (custom flags, env or upstream); stopped afterwards."""
    started: list[Guardproxy] = []

    def start(
        upstream_url: str,
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = False,
        port: int | None = None,
    ) -> Guardproxy:
        gp = start_guardproxy(upstream_url, *args, log_dir=proxy_log_dir, env=env, wait_ready=wait_ready, port=port)
        started.append(gp)
        return gp

    yield start
    for gp in started:
        gp.stop()
