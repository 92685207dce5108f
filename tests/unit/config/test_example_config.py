"""config/guardproxy.yaml is the reference: it must load, and document every option there is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from guardproxy.config import RateLimitRule, RouteSettings, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "guardproxy.yaml"


def _missing_keys(model: type[BaseModel], values: dict[str, Any], prefix: str = "") -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if name not in values:
            missing.append(path)
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(values[name], dict):
            missing += _missing_keys(annotation, values[name], f"{path}.")
    return missing


def test_example_documents_every_setting() -> None:
    values = yaml.safe_load(EXAMPLE.read_text())
    assert _missing_keys(Settings, values) == []


def test_example_routes_show_every_route_option() -> None:
    routes = yaml.safe_load(EXAMPLE.read_text())["routes"]
    shown = set().union(*(route.keys() for route in routes))
    assert shown == set(RouteSettings.model_fields)


def test_example_defaults_are_the_real_defaults() -> None:
    """Apart from the example upstream and routes, the file states the defaults."""
    from_file = load_settings({}, EXAMPLE).model_dump()
    defaults = Settings(upstream={"url": "http://127.0.0.1:8000"}).model_dump()  # type: ignore[arg-type]
    from_file.pop("routes")
    defaults.pop("routes")
    assert from_file == defaults


def _commented_rule_example() -> list[dict[str, Any]]:
    """The rules example under rate_limit, which is commented out (no rule applies by default)."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("  # rules:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(line.removeprefix("  # "))
    rules: list[dict[str, Any]] = yaml.safe_load("\n".join(block))["rules"]
    return rules


def test_example_rate_limit_rules_load_and_show_every_rule_option() -> None:
    rules = _commented_rule_example()
    values = yaml.safe_load(EXAMPLE.read_text())
    values["rate_limit"]["rules"] = rules
    settings = Settings.model_validate(values)
    assert [rule.name for rule in settings.rate_limit.rules] == [rule["name"] for rule in rules]
    shown = set().union(*(rule.keys() for rule in rules))
    assert shown == set(RateLimitRule.model_fields)
