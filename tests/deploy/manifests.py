"""Checks on rendered Kubernetes manifests (the output of `helm template`).

scripts/check-deploy renders the chart in each mode and runs this module on the result:

    python -m tests.deploy.manifests --kube-version 1.35.0 rendered.yaml

It reports three kinds of problem:
- schema: every core object validated strictly (unknown fields are errors) by kubernetes-validate
  against the given Kubernetes versions. The Prometheus Operator kinds (ServiceMonitor,
  PrometheusRule) are custom resources with no schema there, so they get structural checks here.
  Any other kind without a schema is a problem, not a warning.
- policy: what the chart promises, checked across objects: hardened containers, probes on the
  admin port, a grace period that covers the drain, Services and selectors that reach guardproxy
  and never the app behind it, monitoring objects that point at something that exists.
- config: the guardproxy.yaml from the ConfigMap, with each guardproxy container's environment,
  is loaded by guardproxy's own `check-config`.

The policy rules are pure functions over parsed documents, so tests/deploy/test_manifests.py can
prove each of them catches its mistake without helm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.dockerfile import DOCKERFILE, RUNTIME_UID, env_values, parse
from tests.deploy.settings import unknown_settings

Doc = dict[str, Any]

CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
ALERTS = {
    "GuardproxyHigh5xxRatio",
    "GuardproxyHighLatencyP95",
    "GuardproxyRateLimitSpike",
    "GuardproxyUpstreamDown",
    "GuardproxyRateLimitFallbackActive",
    "GuardproxyConfigReloadFailed",
    "GuardproxyAllEndpointsUnhealthy",
    "GuardproxyHighRetryRate",
}
CONFIG_FILE = "guardproxy.yaml"
# guardproxy's defaults for the drain (config/guardproxy.yaml), when the file does not set them.
DEFAULT_DRAIN_DELAY = 5.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
# A secretKeyRef cannot be resolved here; a well-formed stand-in lets check-config judge the rest.
SECRET_STAND_INS = {"GUARDPROXY_RATE_LIMIT__REDIS_URL": "redis://redis.invalid:6379/0"}


def load(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def name_of(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _workloads(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every Deployment."""
    for doc in docs:
        if doc.get("kind") == "Deployment":
            yield doc, doc["spec"]["template"]


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _env(container: Doc) -> dict[str, str]:
    values = {}
    for item in container.get("env", []):
        if "value" in item:
            values[item["name"]] = str(item["value"])
        elif item["name"] in SECRET_STAND_INS:
            values[item["name"]] = SECRET_STAND_INS[item["name"]]
    return values


def _container_ports(pod: Doc) -> dict[str, tuple[str, int]]:
    """Port name -> (container name, number) for every named container port of a pod spec."""
    ports = {}
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if "name" in port:
                ports[port["name"]] = (container["name"], port["containerPort"])
    return ports


def _config_of(docs: list[Doc], pod: Doc, container: Doc) -> tuple[str | None, list[str]]:
    """The guardproxy.yaml a guardproxy container reads, from the ConfigMap its volume names."""
    config_path = _env(container).get("GUARDPROXY_CONFIG")
    if config_path is None:
        return None, []
    mount_dir, _, file_name = config_path.rpartition("/")
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
    volume = volumes.get(mounts.get(mount_dir, ""), {})
    config_map_name = volume.get("configMap", {}).get("name")
    if config_map_name is None:
        return None, [f"GUARDPROXY_CONFIG={config_path} is not on a mounted ConfigMap"]
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == config_map_name:
            if file_name not in doc.get("data", {}):
                return None, [f"ConfigMap/{config_map_name} has no {file_name} for GUARDPROXY_CONFIG"]
            return str(doc["data"][file_name]), []
    return None, [f"the ConfigMap {config_map_name} that guardproxy mounts is not rendered"]


def _hardening_problems(where: str, pod_spec: Doc, container: Doc) -> list[str]:
    pod_context = pod_spec.get("securityContext", {})
    context = container.get("securityContext", {})
    found = []

    def effective(key: str) -> Any:
        return context.get(key, pod_context.get(key))

    if effective("runAsNonRoot") is not True:
        found.append(f"{where}: runAsNonRoot must be true")
    if effective("runAsUser") == 0:
        found.append(f"{where}: must not run as UID 0")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: allowPrivilegeEscalation must be false")
    if context.get("privileged"):
        found.append(f"{where}: must not be privileged")
    if context.get("readOnlyRootFilesystem") is not True:
        found.append(f"{where}: readOnlyRootFilesystem must be true")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        found.append(f"{where}: capabilities must drop ALL")
    if context.get("capabilities", {}).get("add"):
        found.append(f"{where}: must not add capabilities")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: seccompProfile must be RuntimeDefault")
    resources = container.get("resources", {})
    if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
        found.append(f"{where}: needs resource requests and a memory limit")
    return found


def _listener_problems(where: str, spec: Doc, container: Doc) -> list[str]:
    """Listeners, ports and probes agree, and the admin port is where the probes look."""
    found = []
    env = _env(container)
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
    for variable, port_name in (("GUARDPROXY_SERVER__LISTEN", "gp-proxy"), ("GUARDPROXY_ADMIN__LISTEN", "gp-admin")):
        if variable not in env:
            found.append(f"{where}: {variable} must be set (the admin listener defaults to loopback)")
        elif ports.get(port_name) != _port(env[variable]):
            found.append(f"{where}: containerPort {port_name} must be the port of {variable}={env[variable]}")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("gp-admin", ports.get("gp-admin")):
            found.append(f"{where}: {probe} must GET {path} on the admin port")
    mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
        found.append(f"{where}: /tmp must be an emptyDir, the only writable place on a read-only root")
    return found


def _drain_problems(where: str, spec: Doc, config: Doc) -> list[str]:
    server = config.get("server", {})
    drain = float(server.get("drain_delay", DEFAULT_DRAIN_DELAY))
    shutdown = float(server.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace < drain + shutdown + 1:
        return [
            f"{where}: terminationGracePeriodSeconds {grace} must exceed drain_delay {drain:g} "
            f"+ shutdown_timeout {shutdown:g}, or requests in flight are killed"
        ]
    return []


def _sidecar_problems(where: str, config: Doc, apps: list[Doc]) -> list[str]:
    """guardproxy next to an app: the app is reached on loopback only and outlives the drain."""
    found = []
    upstream = str(config.get("upstream", {}).get("url", ""))
    if not upstream.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        found.append(f"{where}: a sidecar's upstream must be the app on loopback, not {upstream!r}")
    for app in apps:
        if app.get("ports"):
            found.append(
                f"{where}: the app container {app['name']} must not declare ports: it listens on loopback only"
            )
        if not app.get("lifecycle", {}).get("preStop"):
            found.append(
                f"{where}: the app container {app['name']} needs a preStop hook to keep serving while guardproxy drains"
            )
    return found


def _guardproxy_problems(docs: list[Doc], where: str, pod: Doc, container: Doc) -> list[str]:
    spec = pod["spec"]
    found = _listener_problems(where, spec, container)
    uid = container.get("securityContext", {}).get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
    if uid != RUNTIME_UID:
        found.append(f"{where}: runAsUser must be the image's UID {RUNTIME_UID}, not {uid}")
    config_text, config_found = _config_of(docs, pod, container)
    found += [f"{where}: {problem}" for problem in config_found]
    config = yaml.safe_load(config_text or "") or {}
    found += _drain_problems(where, spec, config)
    apps = [other for other in spec.get("containers", []) if other is not container]
    if apps:
        found += _sidecar_problems(where, config, apps)
    return found


def _service_problems(docs: list[Doc], pods: list[Doc]) -> list[str]:
    found = []
    for service in (doc for doc in docs if doc.get("kind") == "Service"):
        selector = service["spec"].get("selector", {})
        selected = [pod for pod in pods if _matches(selector, pod["metadata"].get("labels", {}))]
        if not selected:
            found.append(f"{name_of(service)}: its selector {selector} matches no rendered pod")
            continue
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for pod in selected:
                owner = next(
                    (name for key, (name, number) in _container_ports(pod).items() if target in (key, number)), None
                )
                if owner != "guardproxy":
                    found.append(f"{name_of(service)}: port {port['port']} must target guardproxy, not {target!r}")
    return found


def _selector_problems(docs: list[Doc], pods: list[Doc]) -> list[str]:
    found = []
    deployments = {doc["metadata"]["name"]: doc for doc in docs if doc.get("kind") == "Deployment"}
    for doc in docs:
        kind = doc.get("kind")
        if kind in ("PodDisruptionBudget", "NetworkPolicy"):
            key = "selector" if kind == "PodDisruptionBudget" else "podSelector"
            selector = doc["spec"][key].get("matchLabels", {})
            if not any(_matches(selector, pod["metadata"].get("labels", {})) for pod in pods):
                found.append(f"{name_of(doc)}: its selector {selector} matches no rendered pod")
        if kind == "NetworkPolicy":
            named = {name for pod in pods for name in _container_ports(pod)}
            for rule in doc["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    if isinstance(port.get("port"), str) and port["port"] not in named:
                        found.append(f"{name_of(doc)}: allows port {port['port']!r}, which no container has")
        if kind == "HorizontalPodAutoscaler":
            target = deployments.get(doc["spec"]["scaleTargetRef"]["name"])
            if target is None:
                found.append(f"{name_of(doc)}: scales a Deployment that is not rendered")
            elif "replicas" in target["spec"]:
                found.append(f"{name_of(doc)}: {name_of(target)} must not set replicas, or each upgrade resets them")
        if kind == "Deployment":
            selector = doc["spec"]["selector"].get("matchLabels", {})
            if not _matches(selector, doc["spec"]["template"]["metadata"].get("labels", {})):
                found.append(f"{name_of(doc)}: its selector does not match its own pod template")
    return found


def _service_monitor_problems(doc: Doc, services: list[Doc]) -> list[str]:
    found = []
    selector = doc["spec"].get("selector", {}).get("matchLabels", {})
    targets = [svc for svc in services if _matches(selector, svc["metadata"].get("labels", {}))]
    if not targets:
        found.append(f"{name_of(doc)}: selects no rendered Service")
    endpoints = doc["spec"].get("endpoints", [])
    if not endpoints:
        found.append(f"{name_of(doc)}: has no endpoints")
    port_names = {port.get("name") for svc in targets for port in svc["spec"]["ports"]}
    for endpoint in endpoints:
        if endpoint.get("port") not in port_names or endpoint.get("path", "/metrics") != "/metrics":
            found.append(f"{name_of(doc)}: endpoint must scrape /metrics on a port of the selected Service")
    return found


def _prometheus_rule_problems(doc: Doc) -> list[str]:
    found = []
    groups = doc.get("spec", {}).get("groups") or []
    rules = [rule for group in groups for rule in group.get("rules", [])]
    if not groups or any("expr" not in rule or not ("alert" in rule or "record" in rule) for rule in rules):
        found.append(f"{name_of(doc)}: spec.groups must hold rules with expr and alert or record")
    missing = ALERTS - {rule.get("alert") for rule in rules}
    if missing:
        found.append(f"{name_of(doc)}: alerts missing: {', '.join(sorted(missing))}")
    return found


def _dashboard_problems(doc: Doc) -> list[str]:
    found = []
    for key, value in doc.get("data", {}).items():
        try:
            dashboard = json.loads(value)
        except json.JSONDecodeError:
            found.append(f"{name_of(doc)}: {key} is not JSON")
            continue
        if not isinstance(dashboard, dict) or not dashboard.get("panels"):
            found.append(f"{name_of(doc)}: {key} is not a dashboard with panels")
    return found


def _monitoring_problems(docs: list[Doc]) -> list[str]:
    found = []
    services = [doc for doc in docs if doc.get("kind") == "Service"]
    for doc in docs:
        kind = doc.get("kind")
        if kind == "ServiceMonitor":
            found += _service_monitor_problems(doc, services)
        elif kind == "PrometheusRule":
            found += _prometheus_rule_problems(doc)
        elif kind == "ConfigMap" and doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            found += _dashboard_problems(doc)
    return found


def policy_problems(docs: list[Doc]) -> list[str]:
    """Everything the rendered objects get wrong against the chart's promises."""
    found = []
    pods = []
    guardproxies = 0
    for workload, pod in _workloads(docs):
        pods.append(pod)
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is not False:
            found.append(f"{name_of(workload)}: automountServiceAccountToken must be false")
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            where = f"{name_of(workload)} container {container['name']}"
            found += _hardening_problems(where, spec, container)
            if container["name"] == "guardproxy":
                guardproxies += 1
                found += _guardproxy_problems(docs, where, pod, container)
    if not any(doc.get("kind") == "ConfigMap" for doc in docs):
        found.append("no ConfigMap: guardproxy's configuration is not rendered")
    if pods and not guardproxies:
        found.append("no pod runs a container named guardproxy")
    found += _service_problems(docs, pods)
    found += _selector_problems(docs, pods)
    found += _monitoring_problems(docs)
    return found


def schema_problems(docs: list[Doc], version: str) -> list[str]:
    # Installed by scripts/check-deploy only, not by scripts/test.
    import kubernetes_validate  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415
    from kubernetes_validate.utils import (  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: PLC0415
        SchemaNotFoundError,
        ValidationError,
    )

    found = []
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            continue  # no schema in kubernetes-validate: policy_problems checks their structure
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            found.append(f"{name_of(doc)} against Kubernetes {version}: {path}: {exc.message}")
        except SchemaNotFoundError:
            found.append(f"{name_of(doc)}: {doc.get('apiVersion')} has no schema in Kubernetes {version}")
    return found


def config_problems(docs: list[Doc]) -> list[str]:
    """guardproxy's own loader on each guardproxy container's file and environment, on top of the
    image's environment (parsed from the Dockerfile)."""
    found = []
    image_env = env_values(parse(DOCKERFILE.read_text()).runtime)
    image_env.pop("PATH", None)
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDPROXY_")}
    for workload, pod in _workloads(docs):
        for container in pod["spec"].get("containers", []):
            if container["name"] != "guardproxy":
                continue
            found += [
                f"{name_of(workload)}: {variable} is not a guardproxy setting and would be ignored"
                for variable in unknown_settings(_env(container))
            ]
            config_text, _ = _config_of(docs, pod, container)
            with tempfile.TemporaryDirectory() as directory:
                env = {**base_env, **image_env, **_env(container)}
                if config_text is not None:
                    config_file = Path(directory) / CONFIG_FILE
                    config_file.write_text(config_text)
                    env["GUARDPROXY_CONFIG"] = str(config_file)
                result = subprocess.run(
                    [sys.executable, "-m", "guardproxy", "check-config"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
            if result.returncode != 0:
                found.append(f"{name_of(workload)}: guardproxy check-config refuses it:\n{result.stderr.strip()}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check rendered guardproxy manifests.")
    parser.add_argument("--kube-version", action="append", required=True, help="repeatable, e.g. 1.35.0")
    parser.add_argument("manifests", type=Path, nargs="+")
    args = parser.parse_args(argv)
    failed = False
    for path in args.manifests:
        docs = load(path.read_text())
        found = policy_problems(docs) + config_problems(docs)
        for version in args.kube_version:
            found += schema_problems(docs, version)
        kinds = sorted({str(doc.get("kind")) for doc in docs})
        if found:
            failed = True
            print(f"FAIL {path}:")
            for problem in found:
                print(f"  - {problem}")
        else:
            versions = ", ".join(args.kube_version)
            print(f"ok   {path}: {len(docs)} objects ({', '.join(kinds)}), Kubernetes {versions}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
