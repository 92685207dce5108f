"""Which build of guardproxy runs: the hot path compiled with mypyc (setup.py), or pure Python."""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from importlib.util import find_spec

COMPILED = "compiled"
PURE_PYTHON = "pure Python"

# A module every compiled build compiles (tests/unit/test_buildinfo.py holds it to setup.py's
# list). Found, not imported: `guardproxy version` stays quick.
PROBE_MODULE = "guardproxy.context"


def build_kind() -> str:
    spec = find_spec(PROBE_MODULE)
    origin = spec.origin if spec is not None else None
    if origin is not None and origin.endswith(tuple(EXTENSION_SUFFIXES)):
        return COMPILED
    return PURE_PYTHON
