"""The rules scripts/check-deploy applies to the chart's rendered manifests, proven on a small
hand-written release: it passes, and each mistake the rules exist for is caught.

helm itself runs in scripts/check-deploy, not here (the test suite installs no helm)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import Doc, load, policy_problems
from tests.deploy.settings import is_setting, unknown_settings

RELEASE = """
apiVersion: v1
kind: ConfigMap
metadata: {name: gp-config}
data:
  guardproxy.yaml: |
    upstream: {url: "http://api:8000"}
    server: {drain_delay: 5, shutdown_timeout: 30}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: gp}
spec:
  selector: {matchLabels: {app: gp}}
  template:
    metadata: {labels: {app: gp}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 40
      securityContext: {runAsNonRoot: true, runAsUser: 10001, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: guardproxy
          image: guardproxy:0.1.0
          env:
            - {name: GUARDPROXY_CONFIG, value: /etc/guardproxy/guardproxy.yaml}
            - {name: GUARDPROXY_SERVER__LISTEN, value: "0.0.0.0:8080"}
            - {name: GUARDPROXY_ADMIN__LISTEN, value: "0.0.0.0:9090"}
          ports:
            - {name: gp-proxy, containerPort: 8080}
            - {name: gp-admin, containerPort: 9090}
          startupProbe: {httpGet: {path: /healthz, port: gp-admin}}
          livenessProbe: {httpGet: {path: /healthz, port: gp-admin}}
          readinessProbe: {httpGet: {path: /readyz, port: gp-admin}}
          resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 256Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: config, mountPath: /etc/guardproxy, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - {name: config, configMap: {name: gp-config}}
        - {name: tmp, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata: {name: gp}
spec:
  selector: {app: gp}
  ports: [{name: http, port: 80, targetPort: gp-proxy}]
---
apiVersion: v1
kind: Service
metadata: {name: gp-metrics, labels: {component: metrics}}
spec:
  selector: {app: gp}
  ports: [{name: metrics, port: 9090, targetPort: gp-admin}]
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: gp}
spec:
  selector: {matchLabels: {component: metrics}}
  endpoints: [{port: metrics, path: /metrics}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: gp}
spec: {minAvailable: 1, selector: {matchLabels: {app: gp}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: gp}
spec:
  podSelector: {matchLabels: {app: gp}}
  ingress: [{ports: [{port: gp-proxy}]}, {ports: [{port: gp-admin}], from: [{namespaceSelector: {}}]}]
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: gp}
spec:
  groups:
    - name: guardproxy
      rules:
        - {alert: GuardproxyHigh5xxRatio, expr: vector(1)}
        - {alert: GuardproxyHighLatencyP95, expr: vector(1)}
        - {alert: GuardproxyRateLimitSpike, expr: vector(1)}
        - {alert: GuardproxyUpstreamDown, expr: vector(1)}
        - {alert: GuardproxyConfigReloadFailed, expr: vector(1)}
        - {alert: GuardproxyRateLimitFallbackActive, expr: vector(1)}
        - {alert: GuardproxyAllEndpointsUnhealthy, expr: vector(1)}
        - {alert: GuardproxyHighRetryRate, expr: vector(1)}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: gp-dashboard, labels: {grafana_dashboard: "1"}}
data:
  guardproxy.json: '{"title": "guardproxy", "panels": [{"title": "requests"}]}'
"""


def release() -> list[Doc]:
    return load(RELEASE)


def find(docs: list[Doc], kind: str, name: str = "gp") -> Doc:
    return next(doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name)


def pod(docs: list[Doc]) -> Any:
    return find(docs, "Deployment")["spec"]["template"]["spec"]


def guardproxy(docs: list[Doc]) -> Any:
    return pod(docs)["containers"][0]


def add_hpa(docs: list[Doc], target: str = "gp") -> None:
    docs.append(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "gp"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": target}, "maxReplicas": 3},
        }
    )


def add_app(docs: list[Doc], upstream: str, ports: list[Any] | None = None) -> None:
    """Sidecar shape: an app container next to guardproxy, guardproxy's upstream set to `upstream`."""
    app = copy.deepcopy(guardproxy(docs))
    for key in ("env", "startupProbe", "livenessProbe", "readinessProbe", "volumeMounts", "ports"):
        app.pop(key)
    app["name"] = "app"
    app["lifecycle"] = {"preStop": {"sleep": {"seconds": 5}}}
    if ports:
        app["ports"] = ports
    pod(docs)["containers"].insert(0, app)
    find(docs, "ConfigMap", "gp-config")["data"]["guardproxy.yaml"] = yaml.safe_dump({"upstream": {"url": upstream}})


def test_a_sound_release_passes() -> None:
    assert policy_problems(release()) == []


def test_a_sound_sidecar_release_passes() -> None:
    docs = release()
    add_app(docs, "http://127.0.0.1:8000")
    assert policy_problems(docs) == []


def test_an_autoscaled_release_without_replicas_passes() -> None:
    docs = release()
    add_hpa(docs)
    assert policy_problems(docs) == []


def _set(path: str, value: object) -> Callable[[list[Doc]], None]:
    """Set (or, with value None, remove) a key below the guardproxy container: 'a.b.c'."""

    def edit(docs: list[Doc]) -> None:
        *parents, last = path.split(".")
        on_pod = parents[:1] == ["pod"]
        node = pod(docs) if on_pod else guardproxy(docs)
        for key in parents[1:] if on_pod else parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return edit


def _edit_doc(kind: str, name: str, change: Callable[[Doc], None]) -> Callable[[list[Doc]], None]:
    return lambda docs: change(find(docs, kind, name))


def _drop(kind: str, name: str = "gp") -> Callable[[list[Doc]], None]:
    return lambda docs: docs.remove(find(docs, kind, name))


def _env(name: str, value: str) -> Callable[[list[Doc]], None]:
    def edit(docs: list[Doc]) -> None:
        for item in guardproxy(docs)["env"]:
            if item["name"] == name:
                item["value"] = value

    return edit


def _config(text: str) -> Callable[[list[Doc]], None]:
    return _edit_doc("ConfigMap", "gp-config", lambda doc: doc["data"].update({"guardproxy.yaml": text}))


def _rules(change: Callable[[list[Any]], None]) -> Callable[[list[Doc]], None]:
    return _edit_doc("PrometheusRule", "gp", lambda doc: change(doc["spec"]["groups"][0]["rules"]))


def _with_hpa_and_replicas(docs: list[Doc]) -> None:
    add_hpa(docs)
    find(docs, "Deployment")["spec"]["replicas"] = 2


def _app_without_pre_stop(docs: list[Doc]) -> None:
    add_app(docs, "http://127.0.0.1:8000")
    del pod(docs)["containers"][0]["lifecycle"]


def _service_to_the_app(docs: list[Doc]) -> None:
    add_app(docs, "http://127.0.0.1:8000", ports=[{"name": "http", "containerPort": 8000}])
    find(docs, "Service", "gp")["spec"]["ports"][0]["targetPort"] = "http"


MISTAKES: dict[str, tuple[Callable[[list[Doc]], None], str]] = {
    "writable root filesystem": (_set("securityContext.readOnlyRootFilesystem", False), "readOnlyRootFilesystem"),
    "privilege escalation": (_set("securityContext.allowPrivilegeEscalation", None), "allowPrivilegeEscalation"),
    "capabilities kept": (_set("securityContext.capabilities.drop", []), "drop ALL"),
    "capability added": (_set("securityContext.capabilities.add", ["NET_ADMIN"]), "must not add"),
    "privileged": (_set("securityContext.privileged", True), "must not be privileged"),
    "root allowed": (_set("pod.securityContext.runAsNonRoot", None), "runAsNonRoot"),
    "runs as root": (_set("securityContext.runAsUser", 0), "UID 0"),
    "another UID than the image": (_set("pod.securityContext.runAsUser", 1000), "UID 10001"),
    "no seccomp profile": (_set("pod.securityContext.seccompProfile", None), "seccompProfile"),
    "unconfined seccomp": (_set("securityContext.seccompProfile", {"type": "Unconfined"}), "seccompProfile"),
    "no memory limit": (_set("resources.limits", {}), "memory limit"),
    "service account token mounted": (_set("pod.automountServiceAccountToken", None), "automountServiceAccountToken"),
    "no /tmp": (_set("volumeMounts", [{"name": "config", "mountPath": "/etc/guardproxy"}]), "/tmp must be"),
    "liveness on the proxy port": (_set("livenessProbe.httpGet.port", "gp-proxy"), "livenessProbe must GET"),
    "readiness on /healthz": (_set("readinessProbe.httpGet.path", "/healthz"), "readinessProbe must GET /readyz"),
    "no startup probe": (_set("startupProbe", None), "startupProbe"),
    "admin listener on loopback": (_env("GUARDPROXY_ADMIN__LISTEN", "127.0.0.1:9191"), "containerPort gp-admin"),
    "proxy port drifted": (_env("GUARDPROXY_SERVER__LISTEN", "0.0.0.0:8000"), "containerPort gp-proxy"),
    "admin address unset": (
        lambda docs: guardproxy(docs)["env"].pop(2),
        "GUARDPROXY_ADMIN__LISTEN must be set",
    ),
    "grace period shorter than the drain": (_set("pod.terminationGracePeriodSeconds", 30), "terminationGracePeriod"),
    "drain longer than the grace period": (
        _config("upstream: {url: 'http://api:8000'}\nserver: {drain_delay: 15, shutdown_timeout: 30}\n"),
        "drain_delay 15",
    ),
    "grace period left at the default": (_set("pod.terminationGracePeriodSeconds", None), "terminationGracePeriod"),
    "config map not rendered": (_drop("ConfigMap", "gp-config"), "not rendered"),
    "config file misnamed": (
        _edit_doc("ConfigMap", "gp-config", lambda doc: doc.update(data={"config.yaml": "{}"})),
        "has no guardproxy.yaml",
    ),
    "service to nowhere": (
        _edit_doc("Service", "gp", lambda doc: doc["spec"].update(selector={"app": "other"})),
        "matches no rendered pod",
    ),
    "service to a port no container has": (
        _edit_doc("Service", "gp", lambda doc: doc["spec"]["ports"][0].update(targetPort=8000)),
        "must target guardproxy",
    ),
    "service monitor selects nothing": (
        _edit_doc("ServiceMonitor", "gp", lambda doc: doc["spec"]["selector"].update(matchLabels={"x": "y"})),
        "selects no rendered Service",
    ),
    "service monitor on a missing port": (
        _edit_doc("ServiceMonitor", "gp", lambda doc: doc["spec"]["endpoints"][0].update(port="admin")),
        "endpoint must scrape",
    ),
    "disruption budget for other pods": (
        _edit_doc("PodDisruptionBudget", "gp", lambda doc: doc["spec"]["selector"].update(matchLabels={"a": "b"})),
        "matches no rendered pod",
    ),
    "network policy on an unknown port": (
        _edit_doc("NetworkPolicy", "gp", lambda doc: doc["spec"]["ingress"][0]["ports"][0].update(port="http")),
        "which no container has",
    ),
    "autoscaler with fixed replicas": (_with_hpa_and_replicas, "must not set replicas"),
    "autoscaler for a missing deployment": (lambda docs: add_hpa(docs, target="other"), "not rendered"),
    "alert missing": (_rules(lambda rules: rules.pop()), "alerts missing: GuardproxyHighRetryRate"),
    "rule without expr": (_rules(lambda rules: rules[0].pop("expr")), "rules with expr"),
    "dashboard not JSON": (
        _edit_doc("ConfigMap", "gp-dashboard", lambda doc: doc.update(data={"guardproxy.json": "{title: x"})),
        "is not JSON",
    ),
    "dashboard without panels": (
        _edit_doc("ConfigMap", "gp-dashboard", lambda doc: doc.update(data={"guardproxy.json": "{}"})),
        "with panels",
    ),
    "sidecar upstream not on loopback": (lambda docs: add_app(docs, "http://api:8000"), "app on loopback"),
    "sidecar app exposes a port": (
        lambda docs: add_app(docs, "http://127.0.0.1:8000", ports=[{"name": "http", "containerPort": 8000}]),
        "must not declare ports",
    ),
    "sidecar app stops before guardproxy drained": (_app_without_pre_stop, "needs a preStop hook"),
    "service straight to the app": (_service_to_the_app, "must target guardproxy, not 'http'"),
    "guardproxy container renamed": (_set("name", "proxy"), "no pod runs a container named guardproxy"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_policy_catches(mistake: str) -> None:
    docs = release()
    edit, expected = MISTAKES[mistake]
    edit(docs)
    found = policy_problems(docs)
    assert any(expected in problem for problem in found), found


@pytest.mark.parametrize(
    "variable",
    [
        "GUARDPROXY_UPSTREAM__URL",
        "GUARDPROXY_ADMIN__LISTEN",
        "GUARDPROXY_UPSTREAM__HEALTH_CHECK__PATH",
        "GUARDPROXY_CONFIG",
    ],
)
def test_real_settings_are_known(variable: str) -> None:
    assert is_setting(variable)


@pytest.mark.parametrize(
    "variable",
    [
        "GUARDPROXY_SERVER__LISTN",
        "GUARDPROXY_UPSTREAMS__URL",
        "GUARDPROXY_UPSTREAM__HEALTH_CHECK__PATHS",
        "GUARDPROXY_ADMIN_LISTEN",
        "GUARDPROXY_",
    ],
)
def test_misspelt_settings_are_named(variable: str) -> None:
    assert unknown_settings({variable: "x", "HOME": "/"}) == [variable]
