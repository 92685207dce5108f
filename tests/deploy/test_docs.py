"""docs/deployment.md and docs/runbook.md stay true to the code: links resolve, every metric the
runbook names exists (and every metric is in it), and every alert's runbook_url lands on a section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.dockerfile import REPO
from tests.deploy.manifests import ALERTS

DOCS = REPO / "docs"
GUIDES = [DOCS / "deployment.md", DOCS / "runbook.md"]
RUNBOOK = DOCS / "runbook.md"
# The metric families: metrics.py and the family modules it builds (families.py, tunnels.py).
METRICS_SOURCES = sorted((REPO / "src" / "guardproxy" / "observability").glob("*.py"))
RULES = REPO / "helm" / "guardproxy" / "files" / "prometheus-rules.yaml"
HISTOGRAM_SERIES = re.compile(r"_(bucket|count|sum)$")


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {slug(match) for match in re.findall(r"^#+\s+(.+)$", markdown, flags=re.MULTILINE)}


def links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


def broken_links(path: Path) -> list[str]:
    text = path.read_text()
    found = []
    for link in links(text):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            found.append(f"{link}: {target} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            found.append(f"{link}: no heading #{anchor} in {file.name}")
    return found


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.name)
def test_links_resolve(guide: Path) -> None:
    assert broken_links(guide) == []


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n[gone](missing.md) [nowhere](#no-such-section) [fine](#title)\n")
    assert broken_links(page) == [
        "missing.md: missing.md does not exist",
        "#no-such-section: no heading #no-such-section in page.md",
    ]


def metric_names(text: str) -> set[str]:
    return {HISTOGRAM_SERIES.sub("", name) for name in re.findall(r"\bguardproxy_[a-z_]+[a-z]\b", text)}


def defined_metrics() -> set[str]:
    return {name for path in METRICS_SOURCES for name in re.findall(r'"(guardproxy_[a-z_]+)"', path.read_text())}


def test_runbook_names_only_metrics_that_exist() -> None:
    assert metric_names(RUNBOOK.read_text()) - defined_metrics() == set()


def test_runbook_explains_every_metric() -> None:
    assert defined_metrics() - metric_names(RUNBOOK.read_text()) == set()


def test_metric_drift_is_caught() -> None:
    assert metric_names("`guardproxy_requests_totals` and guardproxy_request_duration_seconds_bucket") == {
        "guardproxy_requests_totals",
        "guardproxy_request_duration_seconds",
    }
    assert "guardproxy_requests_totals" not in defined_metrics()


def test_runbook_has_a_section_per_alert() -> None:
    assert {alert.lower() for alert in ALERTS} - anchors(RUNBOOK.read_text()) == set()


def test_every_runbook_url_lands_on_a_section() -> None:
    if not RULES.exists():
        pytest.skip("the alert rules are not in this checkout yet")
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    urls = [rule.get("annotations", {}).get("runbook_url", "") for rule in rules if "alert" in rule]
    assert urls
    for url in urls:
        target, _, anchor = url.partition("#")
        assert target == "docs/runbook.md", url
        assert anchor in anchors(RUNBOOK.read_text()), url
