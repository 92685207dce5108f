"""docs/architecture.md stays true: every module, test and tool it names exists, and every
class or function it names in a module is defined there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs/architecture.md"
PACKAGE = ROOT / "src/guardproxy"
# A path such as `server/protocol.py`, `tests/support/wire.py` or `bench/run.py`.
PATH = re.compile(r"\b((?:[a-z0-9_]+/)+[a-z0-9_]+\.py)\b")
# `module.py` followed by a CamelCase or call-like name on the same line: "server/protocol.py ProxyHttpProtocol".
MODULE_AND_NAME = re.compile(r"\b((?:[a-z0-9_]+/)*[a-z0-9_]+\.py)\s+`?([A-Z][A-Za-z]+)`?")
EXAMPLES = {"guards/user_agent.py"}  # the worked example, not yet written


def resolve(path: str) -> Path | None:
    for base in (PACKAGE, ROOT):
        if (base / path).is_file():
            return base / path
    return None


def test_every_path_the_guide_names_exists() -> None:
    named = set(PATH.findall(GUIDE.read_text())) - EXAMPLES
    assert named, "the guide should name modules"
    assert sorted(path for path in named if resolve(path) is None) == []


def test_classes_named_beside_their_module_are_defined_there() -> None:
    pairs = MODULE_AND_NAME.findall(GUIDE.read_text())
    assert pairs
    missing = []
    for path, name in pairs:
        module = resolve(path)
        if module is not None and not re.search(rf"^(class|def) {name}\b", module.read_text(), re.MULTILINE):
            missing.append((path, name))
    assert missing == []


def test_the_path_matcher_finds_nested_and_plain_paths() -> None:
    assert PATH.findall("see `server/protocol.py` and tests/support/wire.py") == [
        "server/protocol.py",
        "tests/support/wire.py",
    ]
