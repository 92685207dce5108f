"""Which build runs (buildinfo.py), checked against what was installed: a build is compiled
whole or not at all, with exactly the modules setup.py lists."""

from __future__ import annotations

import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import guardproxy
from guardproxy import buildinfo
from guardproxy.buildinfo import COMPILED, PURE_PYTHON, build_kind
from tests.support.build import EXPECTED_BUILD_ENV, compiled_module_names, expected_build


def installed_extensions() -> set[str]:
    """The package's modules that were installed as C extensions."""
    package = Path(guardproxy.__file__).parent
    found = set()
    for path in package.rglob("*"):
        # The longest first: ".cpython-311-x86_64-linux-gnu.so" before ".so".
        for suffix in sorted(EXTENSION_SUFFIXES, key=len, reverse=True):
            if path.name.endswith(suffix):
                relative = path.relative_to(package.parent).as_posix().removesuffix(suffix)
                found.add(relative.replace("/", "."))
                break
    return found


def test_the_build_is_the_one_the_suite_was_told_to_expect() -> None:
    assert build_kind() in (COMPILED, PURE_PYTHON)
    expected = expected_build()
    if expected is not None:
        assert build_kind() == expected, f"{EXPECTED_BUILD_ENV}={expected}, but {build_kind()} runs"


def test_the_extensions_installed_are_exactly_the_listed_ones_or_none() -> None:
    # A stale .so (a module no longer listed, or a leftover beside an edited source) fails here.
    expected = compiled_module_names() if build_kind() == COMPILED else set()
    assert installed_extensions() == expected


def test_the_probe_module_is_one_every_compiled_build_compiles() -> None:
    assert buildinfo.PROBE_MODULE in compiled_module_names()


def test_a_probe_that_is_not_an_extension_means_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildinfo, "PROBE_MODULE", "guardproxy.cli")
    assert build_kind() == PURE_PYTHON


def test_a_probe_that_cannot_be_found_means_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildinfo, "PROBE_MODULE", "guardproxy.no_such_module")
    assert importlib.util.find_spec("guardproxy.no_such_module") is None
    assert build_kind() == PURE_PYTHON
