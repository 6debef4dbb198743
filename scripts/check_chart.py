"""Policy checks on the Helm chart's rendered manifests (scripts/helm_check.sh runs it).

What a reviewer would otherwise eyeball in `helm template` output, asserted: every pod
non-root as the image's user, read-only root, no privilege escalation, no capabilities,
RuntimeDefault seccomp and no service-account token; resources on every container; no
secret value anywhere (no Secret object, secret-looking variables only from secretKeyRef);
every variable one the service reads; the API's probes on /health/live and /health/ready
and a grace period that covers its shutdown; the dispatcher without HTTP probes and with
its 60 s; the migration Job a pre-install/pre-upgrade hook on the direct database URL;
Datadog unified service tags; a PodDisruptionBudget and a NetworkPolicy per component.

    uv run --frozen python scripts/check_chart.py rendered-default.yaml rendered-prod.yaml

Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/check_chart.py` from anywhere
    sys.path.insert(0, str(REPO))

from app.core.config import Settings  # noqa: E402

Obj = dict[str, Any]

SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|TOKEN|PEPPER|CREDENTIAL|SECRETS?$|_KEYS?$|_KEY_ID$|^DATABASE_.*URL$"
)
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
UNIFIED_TAGS = ("env", "service", "version")
# Read by the tracer (DD_*), uvicorn (WEB_CONCURRENCY) or migrations/env.py, not Settings.
OTHER_READERS = re.compile(r"^(DD_[A-Z0-9_]+|WEB_CONCURRENCY|MIGRATION_(LOCK|STATEMENT)_TIMEOUT)$")
# What "the internet" must leave out: private, shared (CGNAT), loopback and link-local.
PRIVATE = [
    ipaddress.ip_network(network)
    for network in (
        *("10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16"),
        *("172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7", "fe80::/10"),
    )
]
TMP = "/tmp"  # noqa: S108  (a mount path to look for, not a file this script writes)

# docs/deployment.md, "Graceful shutdown": after uvicorn's own timeout each API worker
# stops its reconciler and purger (up to 10 s) and publishes what is pending (up to
# KAFKA_PUBLISH_TIMEOUT_S); the dispatcher's five steps (consumer, three loops, POSTs in
# flight) are each bounded by WEBHOOK_TIMEOUT_S + WEBHOOK_CONNECT_TIMEOUT_S + 5 s.
API_TASK_STOP_S = 10
SHUTDOWN_MARGIN_S = 5
DISPATCHER_STEPS = 5


class Chart:
    """The rendered objects of one `helm template` run, and the problems found in them."""

    def __init__(self, docs: list[Obj], uid: int) -> None:
        self.docs = docs
        self.uid = uid
        self.problems: list[str] = []
        self.config: dict[str, str] = {}
        for doc in self.of_kind("ConfigMap"):
            self.config.update(doc.get("data") or {})

    def of_kind(self, kind: str) -> Iterator[Obj]:
        return (doc for doc in self.docs if doc.get("kind") == kind)

    def fail(self, obj: Obj, message: str) -> None:
        self.problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {message}")

    def setting(self, name: str, default: float) -> float:
        return float(self.config.get(name, default))

    def workloads(self) -> Iterator[tuple[Obj, Obj]]:
        """(workload, its pod template) for every Deployment and Job."""
        for doc in self.docs:
            if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                yield doc, doc["spec"]["template"]

    def by_command(self, *command: str) -> list[tuple[Obj, Obj, Obj]]:
        """(workload, pod template, container) whose command starts with ``command``."""
        found = []
        for workload, template in self.workloads():
            for container in template["spec"]["containers"]:
                if tuple(container.get("command", ())[: len(command)]) == command:
                    found.append((workload, template, container))
        return found


def containers(template: Obj) -> list[Obj]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Obj) -> dict[str, Obj]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secret_ref(container: Obj, name: str) -> tuple[str, str] | None:
    ref = env_of(container).get(name, {}).get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def quantity(value: str | float) -> float:
    """A Kubernetes quantity as a number (cores or bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def known_settings() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add((field.alias or name).upper())
    return names


# --- checks ------------------------------------------------------------------------------


def check_pod_security(chart: Chart) -> None:
    for workload, template in chart.workloads():
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            chart.fail(workload, "automountServiceAccountToken must be false")
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser") != chart.uid:
            chart.fail(workload, f"pod must run as non-root uid {chart.uid} (Dockerfile USER)")
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(template):
            where = f"container {container['name']}"
            context = container.get("securityContext", {})
            seccomp = context.get("seccompProfile") or pod.get("seccompProfile") or {}
            capabilities = context.get("capabilities", {})
            rules = {
                "allowPrivilegeEscalation: false": context.get("allowPrivilegeEscalation") is False,
                "readOnlyRootFilesystem: true": context.get("readOnlyRootFilesystem") is True,
                "capabilities drop ALL, add none": "ALL" in capabilities.get("drop", [])
                and not capabilities.get("add"),
                "not privileged": context.get("privileged") is not True,
                "not root": context.get("runAsNonRoot") is not False
                and context.get("runAsUser", chart.uid) == chart.uid,
                "seccompProfile RuntimeDefault": seccomp.get("type") == "RuntimeDefault",
            }
            for rule, holds in rules.items():
                if not holds:
                    chart.fail(workload, f"{where}: needs {rule}")
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == TMP]
            if not tmp or tmp[0]["name"] not in empty_dirs:
                chart.fail(workload, f"{where}: read-only root needs an emptyDir on /tmp")
    for account in chart.of_kind("ServiceAccount"):
        if account.get("automountServiceAccountToken") is not False:
            chart.fail(account, "automountServiceAccountToken must be false")


def check_resources(chart: Chart) -> None:
    for workload, template in chart.workloads():
        for container in containers(template):
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                if request is None or limit is None:
                    chart.fail(workload, f"{container['name']}: {resource} request and limit")
                elif quantity(limit) < quantity(request):
                    chart.fail(workload, f"{container['name']}: {resource} limit < request")


def check_no_secret_values(chart: Chart) -> None:
    for secret in chart.of_kind("Secret"):
        chart.fail(secret, "the chart must only reference Secrets, never carry one")
    for config in chart.of_kind("ConfigMap"):
        for key, value in (config.get("data") or {}).items():
            if SECRET_NAME.search(key) or URL_WITH_PASSWORD.search(str(value)):
                chart.fail(config, f"{key} looks like a secret")
    for workload, template in chart.workloads():
        for container in containers(template):
            for name, entry in env_of(container).items():
                from_secret = "secretKeyRef" in entry.get("valueFrom", {})
                if SECRET_NAME.search(name) and not from_secret:
                    chart.fail(workload, f"{container['name']}: {name} must come from a Secret")
                if URL_WITH_PASSWORD.search(str(entry.get("value", ""))):
                    chart.fail(workload, f"{container['name']}: {name} carries a password")


def check_settings_exist(chart: Chart) -> None:
    """Every variable set is one something reads: a renamed setting fails here."""
    known = known_settings()
    names = {(name, "ConfigMap") for name in chart.config}
    for _, template in chart.workloads():
        for container in containers(template):
            names |= {(name, container["name"]) for name in env_of(container)}
    for name, where in sorted(names):
        if name not in known and not OTHER_READERS.match(name):
            chart.problems.append(f"{where}: {name} is not a setting of app/core/config.py")


def http_probe(container: Obj, kind: str) -> tuple[str, int | str] | None:
    probe = container.get(kind) or {}
    get = probe.get("httpGet")
    if not get:
        return None
    port = get["port"]
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            port = declared["containerPort"]
    return get["path"], port


def check_api(chart: Chart) -> None:
    found = chart.by_command("uvicorn")
    if not found:
        chart.problems.append("no API Deployment (a container running uvicorn)")
    for workload, template, container in found:
        expected = {
            "startupProbe": "/health/live",
            "livenessProbe": "/health/live",
            "readinessProbe": "/health/ready",
        }
        for kind, path in expected.items():
            if http_probe(container, kind) != (path, 8000):
                chart.fail(workload, f"{kind} must GET {path} on port 8000")
        command = container["command"]
        timeout = int(command[command.index("--timeout-graceful-shutdown") + 1])
        pre_stop = (container.get("lifecycle", {}).get("preStop") or {}).get("sleep", {})
        sleep = int(pre_stop.get("seconds", 0))
        if not sleep:
            chart.fail(workload, "preStop sleep missing (uvicorn stops accepting at SIGTERM)")
        publish = chart.setting("KAFKA_PUBLISH_TIMEOUT_S", 5)
        needed = sleep + timeout + API_TASK_STOP_S + publish + SHUTDOWN_MARGIN_S
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        if grace < max(needed, 45):
            chart.fail(
                workload,
                f"terminationGracePeriodSeconds {grace} < preStop {sleep} + graceful {timeout}"
                f" + worker shutdown {API_TASK_STOP_S + publish:g} + {SHUTDOWN_MARGIN_S} s",
            )
        direct = secret_ref(container, "DATABASE_DIRECT_URL")
        if direct is None or direct == secret_ref(container, "DATABASE_URL"):
            chart.fail(workload, "DATABASE_DIRECT_URL (LISTEN) must be its own Secret key")
        # The Agent's HTTP check of readiness (deploy/datadog/conf.d/http_check.d), which
        # monitors/api-ready-http-check.json pages on.
        annotation = (
            template["metadata"]
            .get("annotations", {})
            .get(f"ad.datadoghq.com/{container['name']}.checks", "{}")
        )
        instances = json.loads(annotation).get("http_check", {}).get("instances", [])
        if not any(i.get("url") == "http://%%host%%:8000/health/ready" for i in instances):
            chart.fail(workload, "no Datadog http_check of /health/ready in its annotations")


def check_dispatcher(chart: Chart) -> None:
    found = chart.by_command("payments-webhooks")
    if not found:
        chart.problems.append("no webhook dispatcher (a container running payments-webhooks)")
    for workload, template, container in found:
        if container.get("ports") or any(
            "httpGet" in (container.get(kind) or {}) or "tcpSocket" in (container.get(kind) or {})
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        ):
            chart.fail(workload, "the dispatcher serves no port: no port and no HTTP/TCP probe")
        for policy in policies_for(chart, template):
            for rule in policy["spec"].get("egress", []):
                https = any(p.get("port") == 443 for p in rule.get("ports", []))
                if https and not internet_only(rule.get("to", [])):
                    chart.fail(policy, "HTTPS egress must be to public addresses only")
        step = chart.setting("WEBHOOK_TIMEOUT_S", 5) + chart.setting("WEBHOOK_CONNECT_TIMEOUT_S", 2)
        needed = DISPATCHER_STEPS * (step + 5)
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        if grace < max(needed, 60):
            chart.fail(workload, f"terminationGracePeriodSeconds {grace} < {needed:g} s")


def check_migrations(chart: Chart) -> None:
    found = chart.by_command("alembic", "upgrade", "head")
    if len(found) != 1:
        chart.problems.append(f"expected one migration Job, found {len(found)}")
    api = [c for _, _, c in chart.by_command("uvicorn")]
    pooled_keys = {ref[1] for c in api if (ref := secret_ref(c, "DATABASE_URL"))}
    app_direct = {secret_ref(c, "DATABASE_DIRECT_URL") for c in api}
    hooks = {
        (doc["kind"], doc["metadata"]["name"])
        for doc in chart.docs
        if "helm.sh/hook" in doc["metadata"].get("annotations", {})
    }
    for job, template, container in found:
        annotations = job["metadata"].get("annotations", {})
        phases = set(annotations.get("helm.sh/hook", "").split(","))
        if job["kind"] != "Job" or not {"pre-install", "pre-upgrade"} <= phases:
            chart.fail(job, "migrations must be a pre-install,pre-upgrade hook Job")
        if not annotations.get("helm.sh/hook-delete-policy"):
            chart.fail(job, "hook-delete-policy missing")
        for field in ("backoffLimit", "activeDeadlineSeconds"):
            if field not in job["spec"]:
                chart.fail(job, f"{field} missing")
        url = secret_ref(container, "DATABASE_URL")
        if url is None or url[1] in pooled_keys:
            chart.fail(job, "DATABASE_URL must be the direct URL, not the API's (PgBouncer)")
        elif url in app_direct:
            chart.fail(job, "DATABASE_URL must be the schema owner's, not the app's DML-only role")
        # A pre-install hook runs before the release's own objects exist.
        account = template["spec"].get("serviceAccountName", "default")
        if account != "default" and ("ServiceAccount", account) not in hooks:
            chart.fail(job, f"ServiceAccount {account} is not created by a hook before it")
        if container.get("envFrom"):
            chart.fail(job, "envFrom: the release's ConfigMap does not exist before install")


def check_datadog(chart: Chart) -> None:
    for workload, template in chart.workloads():
        labels = template["metadata"].get("labels", {})
        for tag in UNIFIED_TAGS:
            key = f"tags.datadoghq.com/{tag}"
            if not labels.get(key) or workload["metadata"]["labels"].get(key) != labels[key]:
                chart.fail(workload, f"label {key} missing or different on the pod template")
        if labels.get("admission.datadoghq.com/enabled") != "true":
            chart.fail(workload, "pod label admission.datadoghq.com/enabled is not 'true'")
        annotations = template["metadata"].get("annotations", {})
        for container in containers(template):
            logs = annotations.get(f"ad.datadoghq.com/{container['name']}.logs", "")
            try:
                config = json.loads(logs)[0]
                complete = bool(config["source"] and config["service"])
            except (ValueError, LookupError, TypeError):
                complete = False
            if not complete:
                chart.fail(workload, f"ad.datadoghq.com/{container['name']}.logs incomplete")
            if workload["kind"] == "Job":
                continue
            env = env_of(container)
            for tag in UNIFIED_TAGS:
                path = env.get(f"DD_{tag.upper()}", {}).get("valueFrom", {}).get("fieldRef", {})
                if path.get("fieldPath") != f"metadata.labels['tags.datadoghq.com/{tag}']":
                    chart.fail(workload, f"DD_{tag.upper()} must come from the pod's label")
            if "DD_AGENT_HOST" not in env:
                chart.fail(workload, "DD_AGENT_HOST missing")


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def internet_only(peers: list[Obj]) -> bool:
    """Peers that are whole-internet ipBlocks with every private range cut out."""
    for peer in peers:
        block = peer.get("ipBlock")
        if not block or ipaddress.ip_network(block["cidr"]).prefixlen != 0:
            return False
        cut = [ipaddress.ip_network(n) for n in block.get("except", [])]
        version = ipaddress.ip_network(block["cidr"]).version
        for private in (p for p in PRIVATE if p.version == version):
            if not any(private.subnet_of(c) for c in cut if c.version == version):
                return False
    return bool(peers)


def policies_for(chart: Chart, template: Obj) -> list[Obj]:
    labels = template["metadata"].get("labels", {})
    return [p for p in chart.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def check_disruption_and_network(chart: Chart) -> None:
    budgets = list(chart.of_kind("PodDisruptionBudget"))
    scalers = {
        doc["spec"]["scaleTargetRef"]["name"]: doc
        for doc in chart.of_kind("HorizontalPodAutoscaler")
    }
    for deployment in chart.of_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not any(selects(b["spec"]["selector"], labels) for b in budgets):
            chart.fail(deployment, "no PodDisruptionBudget selects its pods")
        mine = policies_for(chart, deployment["spec"]["template"])
        if not mine:
            chart.fail(deployment, "no NetworkPolicy selects its pods")
        ports = {
            port["containerPort"]
            for c in containers(deployment["spec"]["template"])
            for port in c.get("ports", [])
        }
        for policy in mine:
            if set(policy["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
                chart.fail(policy, "policyTypes must be Ingress and Egress")
            for rule in policy["spec"].get("ingress", []):
                allowed = {p.get("port") for p in rule.get("ports", [])}
                if not rule.get("from") or not allowed or not allowed <= ports:
                    chart.fail(policy, "ingress only from given peers to the pod's own port")
        scaler = scalers.get(deployment["metadata"]["name"])
        if scaler is not None:
            if "replicas" in deployment["spec"]:
                chart.fail(deployment, "replicas set while an HPA scales it (upgrades reset it)")
            if scaler["apiVersion"] != "autoscaling/v2":
                chart.fail(scaler, "use autoscaling/v2")
            if scaler["spec"]["minReplicas"] > scaler["spec"]["maxReplicas"]:
                chart.fail(scaler, "minReplicas > maxReplicas")


CHECKS = (
    check_pod_security,
    check_resources,
    check_no_secret_values,
    check_settings_exist,
    check_api,
    check_dispatcher,
    check_migrations,
    check_datadog,
    check_disruption_and_network,
)


def image_uid(dockerfile: Path) -> int:
    users = re.findall(r"^USER\s+(\d+)", dockerfile.read_text(), flags=re.MULTILINE)
    if not users:
        raise SystemExit(f"{dockerfile}: no numeric USER")
    return int(users[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendered", nargs="+", type=Path, help="output of `helm template`")
    parser.add_argument("--dockerfile", type=Path, default=REPO / "Dockerfile")
    args = parser.parse_args()
    uid = image_uid(args.dockerfile)
    failed = False
    for path in args.rendered:
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        chart = Chart(docs, uid)
        for check in CHECKS:
            check(chart)
        for problem in chart.problems:
            print(f"{path}: {problem}")
        failed |= bool(chart.problems)
        if not chart.problems:
            print(f"{path}: {len(docs)} objects, {len(CHECKS)} policy checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
