"""The shipped dashboard and alert rules (helm/guardproxy/files/) against what guardproxy really
exposes: every metric and label they query is in a real scrape of a real guardproxy, with one
worker and with two. promtool checks the rules' syntax and behaviour (scripts/check-monitoring);
this checks that they look at the right series."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from guardproxy.observability.metrics import ProxyMetrics
from tests.deploy.manifests import ALERTS
from tests.support.processes import Guardproxy, start_guardproxy, wait_until
from tests.support.raw import raw_exchange

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "guardproxy" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
RULES = FILES / "prometheus-rules.yaml"
# Added by Prometheus (job, instance) and by Kubernetes service discovery (namespace).
TARGET_LABELS = {"job", "instance", "namespace"}
PROMQL_WORDS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "group_left",
    "group_right",
}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def queries() -> dict[str, str]:
    """Every PromQL expression shipped, named by where it is."""
    found = {f"rule {rule['alert']}": rule["expr"] for rule in rules()}
    board = dashboard()
    for panel in panels(board):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(selector, label): the selector is PromQL, the label one of its labels.
            selector, label = re.fullmatch(r"label_values\((.*), *(\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
            found[f"variable {variable['name']}"] = f"{selector} + on ({label}) {selector}"
    return found


def referenced(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names a PromQL expression uses."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    labels: set[str] = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    for grouping in _GROUPING.findall(expr):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors: [5m], [$__rate_interval]
    expr = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", " ", expr)  # numbers
    names = set(re.findall(r"[A-Za-z_:][\w:]*", expr)) - PROMQL_WORDS
    return names, labels


def exposed(text: str) -> tuple[set[str], set[str]]:
    """Series names (and label names) a scrape offers, including those of families that have no
    sample yet: a counter `x` offers x_total, a histogram x_bucket, x_sum and x_count."""
    names: set[str] = set()
    labels: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def declared_labels() -> set[str]:
    """Label names of every guardproxy metric, samples or not (a rate-limit rule's labels appear
    only once the limiter has decided something)."""
    metrics = ProxyMetrics(CollectorRegistry())
    return {
        label
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for label in metric._labelnames
    } | {"le"}


@pytest.fixture(scope="module")
def scrapes(upstream, proxy_log_dir) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Real scrapes after real traffic, of a one-worker and a two-worker guardproxy."""
    texts = {}
    for workers in ("1", "2"):
        gp = start_guardproxy(upstream.url, "--workers", workers, log_dir=proxy_log_dir)
        try:
            send_traffic(gp)
            wait_until(lambda gp=gp: "guardproxy_upstream_duration_seconds_bucket" in scrape(gp), timeout=5)
            texts[workers] = scrape(gp)
        finally:
            assert gp.stop() == 0
    return texts


def scrape(gp: Guardproxy) -> str:
    return httpx.get(f"{gp.admin_url}/metrics").text


def send_traffic(gp: Guardproxy) -> None:
    for path in ("/echo", "/status/500", "/status/404"):
        httpx.get(f"{gp.url}{path}")
    httpx.post(f"{gp.url}/echo", content=b"body")
    raw_exchange(gp.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")


# --- the files themselves -------------------------------------------------------------------------


def test_rules_are_exactly_the_shipped_alerts_each_with_a_runbook() -> None:
    shipped = rules()
    assert {rule["alert"] for rule in shipped} == ALERTS
    assert len(shipped) == len(ALERTS)
    for rule in shipped:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}"


def test_dashboard_uses_the_templated_datasource_and_a_route_variable() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["route"]["type"] == "query"
    assert variables["route"]["multi"]
    assert variables["route"]["includeAll"]
    assert "__inputs" not in board  # provisioned as is by Grafana's sidecar: no import-time inputs
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_panels_are_laid_out_without_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    ids = []
    for panel in panels(dashboard()):
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    assert len(ids) == len(set(ids))


def test_dashboard_has_a_panel_for_each_concern() -> None:
    used = {name for expr in queries().values() for name in referenced(expr)[0]}
    for concern in (
        "guardproxy_requests_total",
        "guardproxy_request_duration_seconds_bucket",
        "guardproxy_upstream_duration_seconds_bucket",
        "guardproxy_upstream_errors_total",
        "guardproxy_requests_in_flight",
        "guardproxy_ratelimit_decisions_total",
        "guardproxy_ratelimit_fallback_active",
        "guardproxy_ratelimit_store_errors_total",
        "guardproxy_protocol_refusals_total",
        "guardproxy_log_lines_dropped_total",
    ):
        assert concern in used, concern
    exprs = " ".join(target["expr"] for panel in panels(dashboard()) for target in panel.get("targets", []))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs
    assert 'route=~"$route"' in exprs


# --- against a real scrape --------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_query_uses_only_series_and_labels_guardproxy_exposes(scrapes: dict[str, str], workers: str) -> None:
    names, labels = exposed(scrapes[workers])
    known_labels = labels | declared_labels() | TARGET_LABELS
    problems = []
    for where, expr in queries().items():
        metric_names, label_names = referenced(expr)
        assert metric_names, f"{where}: no metric found in {expr!r}"
        problems += [f"{where}: {name} is not exposed" for name in sorted(metric_names - names)]
        problems += [f"{where}: label {label} is not exposed" for label in sorted(label_names - known_labels)]
    assert problems == []


def test_label_values_in_queries_are_values_guardproxy_uses() -> None:
    """outcome="rate_limited" in a query that guardproxy spells "ratelimited" would match nothing."""
    source = "\n".join(path.read_text() for path in (ROOT / "src" / "guardproxy").rglob("*.py"))
    checked = 0
    for where, expr in queries().items():
        for label, values in re.findall(
            r'\b(outcome|status_class|kind|decision|reason)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', expr
        ):
            for value in values.split("|"):
                checked += 1
                assert f'"{value}"' in source or re.fullmatch(r"[1-5]xx", value), f"{where}: {label}={value!r}"
    assert checked >= 5


@pytest.mark.parametrize(
    ("expr", "names", "labels"),
    [
        ('sum by (route) (rate(x_total{job=~"$job", outcome!="a|b"}[5m]))', {"x_total"}, {"route", "job", "outcome"}),
        ("histogram_quantile(0.95, sum by (le) (rate(y_bucket[$__rate_interval]))) > 1e3", {"y_bucket"}, {"le"}),
        ("a / on (instance) group_left b", {"a", "b"}, {"instance"}),
    ],
)
def test_the_query_reader_finds_names_and_labels(expr: str, names: set[str], labels: set[str]) -> None:
    assert referenced(expr) == (names, labels)


def test_a_misspelled_metric_would_be_caught(scrapes: dict[str, str]) -> None:
    names, _ = exposed(scrapes["1"])
    misspelled, _ = referenced("sum(rate(guardproxy_request_total[5m]))")
    assert misspelled - names == {"guardproxy_request_total"}
