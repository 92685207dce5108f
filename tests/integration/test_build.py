"""The build the integration tests run: the guardproxy processes they start load the build this
interpreter has installed (compiled or pure Python), and `guardproxy version` names it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import orjson
import psutil

from guardproxy import __version__
from guardproxy.buildinfo import COMPILED, build_kind
from tests.support.build import EXPECTED_BUILD_ENV, expected_build
from tests.support.processes import Guardproxy

# The compiled build's shared library (setup.py, group_name).
COMPILED_LIBRARY = "guardproxy__mypyc"


def loaded_compiled_library(pid: int) -> bool:
    process = psutil.Process(pid)
    return any(
        COMPILED_LIBRARY in mapping.path
        for member in [process, *process.children(recursive=True)]
        for mapping in member.memory_maps()
    )


def test_guardproxy_version_names_the_build_the_tests_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "guardproxy", "version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout == f"guardproxy {__version__} ({build_kind()})\n"
    expected = expected_build()
    if expected is not None:
        assert f"({expected})" in result.stdout, f"{EXPECTED_BUILD_ENV}={expected}: {result.stdout}"


def test_the_guardproxy_serving_requests_runs_that_build(proxy: Guardproxy) -> None:
    assert proxy.args[:3] == [sys.executable, "-m", "guardproxy"]
    assert httpx.get(f"{proxy.url}/").status_code == 200
    assert loaded_compiled_library(proxy.process.pid) == (build_kind() == COMPILED)
    # The operator learns it from the start-up line (pip hides what the build printed).
    starting = [line for line in proxy.log_text().splitlines() if '"guardproxy starting"' in line]
    assert len(starting) == 1
    assert orjson.loads(starting[0])["build"] == build_kind()
