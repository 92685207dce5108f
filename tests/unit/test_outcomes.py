"""Outcomes are one enumerated type (outcomes.py): the docs, the alert rules and the dashboard
name only outcomes that exist, and the runbook names every one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guardproxy.outcomes import PROTOCOL_OUTCOMES, SECURITY_OUTCOMES, Outcome

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm/guardproxy/files/prometheus-rules.yaml"
DASHBOARD = ROOT / "helm/guardproxy/files/grafana-dashboard.json"
RUNBOOK = ROOT / "docs/runbook.md"
# outcome="x", outcome!="x", outcome=~"x|y" in PromQL (raw or JSON-escaped quotes).
OUTCOME_MATCHER = re.compile(r'outcome!?[=~]+\\?"([a-z_|]+)\\?"')


def outcomes_named_in(path: Path) -> set[str]:
    return {name for match in OUTCOME_MATCHER.findall(path.read_text()) for name in match.split("|")}


@pytest.mark.parametrize("path", [RULES, DASHBOARD, RUNBOOK], ids=lambda path: path.name)
def test_queries_name_only_outcomes_that_exist(path: Path) -> None:
    named = outcomes_named_in(path)
    assert named, f"{path.name} should filter on some outcome"
    assert named <= {outcome.value for outcome in Outcome}


def test_the_runbook_names_every_outcome() -> None:
    text = RUNBOOK.read_text()
    assert [outcome.value for outcome in Outcome if f"`{outcome.value}`" not in text] == []


def test_the_matcher_reads_escaped_and_alternative_filters() -> None:
    assert OUTCOME_MATCHER.findall('outcome!~\\"client_closed|shed\\"') == ["client_closed|shed"]
    assert OUTCOME_MATCHER.findall('outcome="ok"') == ["ok"]


def test_security_and_protocol_outcomes_are_disjoint_subsets() -> None:
    assert set(SECURITY_OUTCOMES) | set(PROTOCOL_OUTCOMES) <= set(Outcome)
    assert not set(SECURITY_OUTCOMES) & set(PROTOCOL_OUTCOMES)


def test_values_are_what_logs_and_labels_carry() -> None:
    assert f"{Outcome.CLIENT_CLOSED}" == "client_closed"
    assert str(Outcome.OK) == "ok"
