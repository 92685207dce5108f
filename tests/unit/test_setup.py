"""setup.py: when the build compiles and why not, the pins that make it reproducible, and the
rules code in a compiled module must follow (docs/architecture.md, "Compiled build")."""

from __future__ import annotations

import ast
import builtins
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.build import ROOT, load_setup


def native_base(name: str) -> bool:
    """Whether a native (compiled) class may subclass the builtin `name`, if it is one: object,
    and exceptions laid out as BaseException is (OSError, with its errno fields, is not)."""
    base = getattr(builtins, name, None)
    if not isinstance(base, type) or base is object:
        return True
    return issubclass(base, BaseException) and base.__basicsize__ == BaseException.__basicsize__


def compile_rule_violations(source: str) -> list[str]:
    """What in `source` breaks the compiled build, or misbehaves once compiled."""
    problems = []
    tree = ast.parse(source)
    problems.extend(_constants_not_final(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and _yields(node):
            problems.append(f"line {node.lineno}: async generator {node.name} (mypyc cannot compile it)")
        if isinstance(node, ast.FunctionDef) and any(
            ast.unparse(decorator).endswith("cached_property") for decorator in node.decorator_list
        ):
            problems.append(f"line {node.lineno}: cached_property {node.name} (never caches on a compiled class)")
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            problems.append(f"line {node.lineno}: imports under TYPE_CHECKING (compiled annotations need them)")
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base) for base in node.bases]
            for base in bases:
                if not native_base(base):
                    problems.append(f"line {node.lineno}: {node.name} subclasses the builtin {base}")
            exception = any(base.endswith(("Error", "Exception")) for base in bases)
            if exception and any(isinstance(item, ast.Assign | ast.AnnAssign) for item in node.body):
                problems.append(f"line {node.lineno}: exception class {node.name} has class attributes")
    return problems


def _constants_not_final(tree: ast.Module) -> list[str]:
    """Module-level names bound once and not declared Final: compiled code looks each up in the
    module's dict at every use (about 130 instructions), a Final one is a C static."""
    rebound = {name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    problems = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, annotation, value = node.targets, "", node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, annotation, value = [node.target], ast.unparse(node.annotation), node.value
        else:
            continue
        if annotation == "Final" and isinstance(value, ast.Tuple) and _numbers(value):
            # mypyc keeps a Final tuple of numbers of a fixed length unboxed, as C numbers, and
            # boxes every one of them again wherever the tuple is iterated or searched.
            problems.append(f"line {node.lineno}: Final tuple {ast.unparse(targets[0])} needs a tuple[T, ...] type")
        if annotation.startswith(("Final", "TypeAlias")) or _type_expression(value):
            continue
        for target in targets:
            if isinstance(target, ast.Tuple):
                problems.append(f"line {node.lineno}: module constants unpacked from a tuple cannot be Final")
            elif isinstance(target, ast.Name) and target.id != "__all__" and target.id not in rebound:
                problems.append(f"line {node.lineno}: module constant {target.id} is not Final")
    return problems


def _numbers(value: ast.Tuple) -> bool:
    return all(isinstance(item, ast.Constant) and isinstance(item.value, int | float) for item in value.elts)


def _type_expression(value: ast.expr) -> bool:
    """A type alias (`Headers = list[...]`, `Address = IPv4Address | IPv6Address`) or a TypeVar,
    which cannot be Final."""
    if isinstance(value, ast.Subscript):
        return True
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr):
        return _type_expression(value.left) or _type_expression(value.right) or _type_name(value.left)
    return isinstance(value, ast.Call) and ast.unparse(value.func).endswith(("TypeVar", "ParamSpec", "NewType"))


def _type_name(value: ast.expr) -> bool:
    name = ast.unparse(value).rpartition(".")[2]
    return name[:1].isupper() and not name.isupper()


def _yields(function: ast.AsyncFunctionDef) -> bool:
    """A yield in the function's own body (not in a function nested in it)."""
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            pending.extend(ast.iter_child_nodes(node))
    return False


@pytest.fixture
def setup_module() -> ModuleType:
    return load_setup()


# The rules, each able to catch what it is for.


def test_an_async_generator_is_caught_but_a_nested_generator_is_not() -> None:
    source = "async def stream():\n    yield b''\n\nasync def fine():\n    def inner():\n        yield 1\n"
    assert compile_rule_violations(source) == ["line 1: async generator stream (mypyc cannot compile it)"]


def test_a_cached_property_is_caught_but_a_plain_property_is_not() -> None:
    # A compiled class has no __dict__ for it to cache in: it recomputes at every use (the pool's
    # event-loop lookup cost two getpid() system calls per request that way).
    source = (
        "import functools\nclass Pool:\n    @functools.cached_property\n    def loop(self): ...\n"
        "    @property\n    def size(self): ...\n"
    )
    assert compile_rule_violations(source) == ["line 4: cached_property loop (never caches on a compiled class)"]


def test_a_module_constant_that_is_not_final_is_caught_but_aliases_and_rebound_names_are_not() -> None:
    # Compiled code reads a plain module global from the module's dict at every use: some 90 such
    # lookups per request cost about 6 % of the hot path before they were made Final.
    source = (
        "from typing import Final\nimport ipaddress\n"
        "LIMIT = 10\nFIELDS: frozenset[bytes] = frozenset()\nNO, YES = Choice\nUNION = A | B\n"
        "DONE: Final = 1\nHeaders = list[tuple[bytes, bytes]]\n"
        "Address = ipaddress.IPv4Address | ipaddress.IPv6Address\n"
        "__all__ = ['DONE']\n_state = None\ndef reset():\n    global _state\n    _state = 1\n"
        "BOUNDS: Final = (0.1, 1.0)\nLIMITS: Final[tuple[float, ...]] = (0.1, 1.0)\n"
    )
    assert compile_rule_violations(source) == [
        "line 3: module constant LIMIT is not Final",
        "line 4: module constant FIELDS is not Final",
        "line 5: module constants unpacked from a tuple cannot be Final",
        "line 6: module constant UNION is not Final",
        "line 15: Final tuple BOUNDS needs a tuple[T, ...] type",
    ]


def test_imports_under_type_checking_are_caught() -> None:
    source = "import typing\nif typing.TYPE_CHECKING:\n    from x import Y\n"
    assert compile_rule_violations(source) == ["line 2: imports under TYPE_CHECKING (compiled annotations need them)"]


def test_a_class_subclassing_a_builtin_other_than_exception_is_caught() -> None:
    source = "class Gone(OSError):\n    pass\n\nclass Fine(ValueError):\n    pass\n\nclass Table(dict):\n    pass\n"
    assert compile_rule_violations(source) == [
        "line 1: Gone subclasses the builtin OSError",
        "line 7: Table subclasses the builtin dict",
    ]


def test_class_attributes_on_an_exception_class_are_caught() -> None:
    source = "class UpstreamError(Exception):\n    kind = 'error'\n\nclass Plain:\n    kind = 'fine'\n"
    assert compile_rule_violations(source) == ["line 1: exception class UpstreamError has class attributes"]


def test_every_compiled_module_exists_and_follows_the_rules(setup_module: ModuleType) -> None:
    assert len(set(setup_module.COMPILED_MODULES)) == len(setup_module.COMPILED_MODULES)
    for module in setup_module.COMPILED_MODULES:
        path = ROOT / "src" / module
        assert path.is_file(), module
        assert compile_rule_violations(path.read_text()) == [], module


# When the build compiles.


def test_pure_python_on_request(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GUARDPROXY_PURE_PYTHON", "1")
    assert setup_module.compile_intended() is False
    assert "GUARDPROXY_PURE_PYTHON=1: building pure Python" in capsys.readouterr().err


def test_an_editable_install_is_pure_python(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GUARDPROXY_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "editable_wheel", "--dist-dir", "/tmp/x"])
    assert setup_module.compile_intended() is False
    assert "an editable install" in capsys.readouterr().err


def test_without_a_compiler_the_build_falls_back_and_names_it(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GUARDPROXY_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    monkeypatch.setenv("CC", "/nonexistent/bin/cc -O2")
    assert setup_module.compile_intended() is False
    assert "no C compiler (/nonexistent/bin/cc not found): falling back to pure Python" in capsys.readouterr().err


def test_without_python_headers_the_build_falls_back_and_names_them(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GUARDPROXY_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    monkeypatch.setattr(setup_module, "python_headers", lambda: tmp_path / "Python.h")
    assert setup_module.compile_intended() is False
    assert f"no Python headers ({tmp_path / 'Python.h'} not found" in capsys.readouterr().err


def test_without_mypyc_the_build_falls_back(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GUARDPROXY_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    monkeypatch.setattr(setup_module, "missing_toolchain", lambda: None)
    monkeypatch.setattr(setup_module, "find_spec", lambda name: None)
    assert setup_module.compile_intended() is False
    assert "mypyc is not installed" in capsys.readouterr().err


def test_with_a_compiler_headers_and_mypyc_the_build_compiles(
    setup_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GUARDPROXY_PURE_PYTHON", raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(sys, "argv", ["setup.py", "bdist_wheel"])
    monkeypatch.setattr(setup_module, "find_spec", lambda name: object())
    assert setup_module.missing_toolchain() is None
    assert setup_module.compile_intended() is True


# Reproducible from constraints.txt.


def test_the_build_requirements_are_exact_pins_that_constraints_txt_repeats() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    constraints = {
        line.split("==")[0].lower().replace("_", "-"): line.strip()
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert {requirement.split("==")[0] for requirement in requires} >= {"setuptools", "mypy"}
    for requirement in requires:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement} is not an exact pin"
        assert constraints[name.lower()] == f"{constraints[name.lower()].split('==')[0]}=={version}", requirement
