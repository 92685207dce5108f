"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import UpstreamProcess
from tests.support.websocket import start_ws_upstream


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[UpstreamProcess]:
    """A uvicorn upstream with the `websockets` backend (tests/support/ws_upstream.py)."""
    upstream = start_ws_upstream()
    yield upstream
    upstream.stop()
