"""setup.py's module list and checks, loaded without running setup(), and the build the suite
is told to expect."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]

# scripts/test sets it for each pass ("compiled" or "pure Python"); unset, either build is fine.
EXPECTED_BUILD_ENV = "EXPECT_GUARDPROXY_BUILD"


def load_setup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("guardproxy_setup", ROOT / "setup.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_module_names() -> set[str]:
    modules: list[str] = load_setup().COMPILED_MODULES
    return {module.removesuffix(".py").replace("/", ".") for module in modules}


def expected_build() -> str | None:
    return os.environ.get(EXPECTED_BUILD_ENV) or None
