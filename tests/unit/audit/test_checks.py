"""The audit's catalogue (audit/checks.py): every check is judged by a probe, and every flag and
setting a fix names is a real one, so a renamed setting breaks this test, not a report."""

from __future__ import annotations

import types
import typing

import pytest
from pydantic import BaseModel

from guardproxy import cli
from guardproxy.audit import probes
from guardproxy.audit.checks import CHECKS, Fix
from guardproxy.config import Settings

FIXES = [(check.id, check.fix) for check in CHECKS if check.fix is not None]


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def resolves(dotted: str) -> bool:
    model: type[BaseModel] | None = Settings
    for part in dotted.split("."):
        name = part.removesuffix("[]")
        if model is None or name not in model.model_fields:
            return False
        model = _model_in(model.model_fields[name].annotation)
    return True


def test_every_check_is_judged_by_exactly_one_probe() -> None:
    judged = [check for probe in probes.ALL for check in probe.checks]
    assert sorted(judged) == sorted(check.id for check in CHECKS)


def test_check_ids_are_unique_and_items_are_on_the_checklist() -> None:
    assert len({check.id for check in CHECKS}) == len(CHECKS)
    for check in CHECKS:
        assert check.item is None or 1 <= check.item <= 49
        assert check.weight in (1, 2, 3)


@pytest.mark.parametrize(("check", "fix"), FIXES)
def test_fix_flags_are_flags_of_guardproxy_run(check: str, fix: Fix) -> None:
    options = {flag.option for flag in cli.FLAGS}
    for flag in fix.flags:
        assert flag.split()[0] in options, check


@pytest.mark.parametrize(("check", "fix"), FIXES)
def test_fix_settings_are_settings(check: str, fix: Fix) -> None:
    for setting in fix.settings:
        assert resolves(setting), f"{check}: {setting}"


def test_resolves_can_say_no() -> None:
    assert resolves("routes[].body_limit.max_bytes")
    assert not resolves("security_headers.no_such_key")
    assert not resolves("cors.origins.deeper")


def test_fix_descriptions() -> None:
    assert Fix(("--a X",), ("b.c",), "why").describe() == "--a X / `b.c` (why)"
    assert Fix(note="only a note").describe() == "only a note"
    assert Fix(settings=("b.c", "d.e")).describe() == "`b.c`, `d.e`"


def test_the_cli_does_not_load_the_audit_machinery_to_build_its_parser() -> None:
    # `guardproxy version` stays quick: only the argument definitions are imported at start.
    audit_command = vars(cli)["audit_command"]
    assert isinstance(audit_command, types.ModuleType)
    assert "httpx" not in audit_command.__dict__
