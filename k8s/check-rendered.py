"""Checks a rendered overlay (kubectl kustomize) for what schema validation
cannot see: a Deployment an HPA scales sets no replicas of its own (an apply
would reset the count the HPA chose), and the namespaces enforce the
restricted Pod Security Standard that every pod is written to meet; where
the optional monitoring component is used, the ServiceMonitor reaches a
`metrics` port of each service and every alert is complete and asks only for
metrics docs/OPERATIONS.md lists; where the tracing component is used, every
service sends its spans to a Service of the render. And the Dockerfile the
image is built from pins its base images by digest, exposes every port the
manifests give its containers and carries the OCI labels a registry shows.

Usage: check-rendered.py RENDERED.yaml; exits 1 naming what is wrong."""

import pathlib
import re
import sys

import yaml

SERVICES = ["wallet", "metering", "invoicing", "payments", "orchestrator"]
# What Prometheus scrapes: the services and the console (which has no database, so no migration Job).
SCRAPED = SERVICES + ["console"]
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "OPERATIONS.md"
DOCKERFILE = pathlib.Path(__file__).resolve().parent.parent / "Dockerfile"
OCI_LABELS = ["title", "description", "version", "revision", "source", "licenses"]


def check_orchestrator_egress(documents: list, problems: list) -> None:
    """The orchestrator reaches what its top-ups call and DNS, and no webhook
    reaches a private or link-local address."""
    policies = [
        d for d in documents
        if d["kind"] == "NetworkPolicy"
        and "Egress" in d["spec"].get("policyTypes", [])
        and d["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "orchestrator"
    ]
    if not policies:
        problems.append("the orchestrator has no egress NetworkPolicy")
        return
    rules = [rule for policy in policies for rule in policy["spec"].get("egress", [])]
    reached = {
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        for rule in rules
        for peer in rule.get("to", [])
    }
    for service in ("wallet", "invoicing", "payments"):
        if service not in reached:
            problems.append(f"the orchestrator's egress does not reach {service}")
    if not any(port.get("port") == 53 for rule in rules for port in rule.get("ports", [])):
        problems.append("the orchestrator's egress does not reach DNS")
    for rule in rules:
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block and block["cidr"] == "0.0.0.0/0":
                for inward in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"):
                    if inward not in block.get("except", []):
                        problems.append(f"the orchestrator's egress to the internet does not except {inward}")


def check_migration_jobs(documents: list, problems: list) -> None:
    """A migration Job deletes itself when finished, so the next apply runs
    it again whatever changed, and runs without a mesh sidecar."""
    jobs = [d for d in documents if d["kind"] == "Job" and d["metadata"]["name"].endswith("-migrate")]
    if len(jobs) != len(SERVICES):
        problems.append(f"{len(jobs)} migration Jobs, not one per service")
    for job in jobs:
        name = job["metadata"]["name"]
        if job["spec"].get("ttlSecondsAfterFinished") != 0:
            problems.append(f"Job {name} outlives its run: the next apply cannot change it")
        annotations = job["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("sidecar.istio.io/inject") != "false" or annotations.get("linkerd.io/inject") != "disabled":
            problems.append(f"Job {name} would get a mesh sidecar that keeps it from finishing")


def check_image(documents: list, problems: list) -> None:
    """The final stage of the Dockerfile against the reservoir containers."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("FROM ") and not re.search(r"@sha256:[0-9a-f]{64}(\s|$)", line):
            problems.append(f"Dockerfile: a base image pinned by tag only: {line}")
    final = text.split("\nFROM ")[-1]
    exposed = set()
    for line in final.splitlines():
        if line.startswith("EXPOSE "):
            exposed.update(int(port.split("/")[0]) for port in line.split()[1:])
    for label in OCI_LABELS:
        if f"org.opencontainers.image.{label}=" not in final:
            problems.append(f"Dockerfile: the image has no org.opencontainers.image.{label} label")
    for document in documents:
        if document["kind"] not in ("Deployment", "Job"):
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            if "reservoir" not in container["image"]:
                continue
            for port in container.get("ports", []):
                if port["containerPort"] not in exposed:
                    problems.append(
                        f"{document['kind']} {document['metadata']['name']} uses port {port['containerPort']}, "
                        "which the Dockerfile does not EXPOSE"
                    )


def documented_metrics() -> set:
    """The metric names in the metrics table of docs/OPERATIONS.md."""
    names = set()
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", line.split("|")[1]))
    return names


def check_monitoring(documents: list, problems: list) -> None:
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    for monitor in (d for d in documents if d["kind"] == "ServiceMonitor"):
        selected = []
        for expression in monitor["spec"]["selector"].get("matchExpressions", []):
            if expression["key"] == "app.kubernetes.io/name" and expression["operator"] == "In":
                selected.extend(expression["values"])
        if sorted(selected) != sorted(SCRAPED):
            problems.append(f"ServiceMonitor {monitor['metadata']['name']} selects {selected}, not {SCRAPED}")
        ports = [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]]
        for name in selected:
            service_ports = [port["name"] for port in services.get(name, {}).get("spec", {}).get("ports", [])]
            for port in ports:
                if port not in service_ports:
                    problems.append(f"ServiceMonitor scrapes port {port}, which Service {name} does not have")
    known = documented_metrics()
    for rule_set in (d for d in documents if d["kind"] == "PrometheusRule"):
        for group in rule_set["spec"]["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert", "?")
                for field in ("expr", "for"):
                    if not rule.get(field):
                        problems.append(f"alert {name} has no {field}")
                if not rule.get("labels", {}).get("severity"):
                    problems.append(f"alert {name} has no severity")
                if not rule.get("annotations", {}).get("summary"):
                    problems.append(f"alert {name} has no summary")
                for metric in re.findall(r"\b(reservoir_[a-z_]+)", rule.get("expr", "")):
                    base = re.sub(r"_(bucket|sum|count)$", "", metric)
                    if base not in known:
                        problems.append(f"alert {name} asks for {metric}, which docs/OPERATIONS.md does not list")


def check_tracing(documents: list, problems: list) -> None:
    services = {d["metadata"]["name"] for d in documents if d["kind"] == "Service"}
    endpoints = {
        d["metadata"]["name"]: d.get("data", {}).get("RESERVOIR__TELEMETRY__OTLP_ENDPOINT", "")
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].split("-")[0] in SERVICES
    }
    if not any(endpoints.values()):
        return
    for settings, endpoint in endpoints.items():
        host = re.sub(r"^https?://", "", endpoint).split(":")[0]
        if host not in services:
            problems.append(f"ConfigMap {settings} sends spans to {endpoint!r}, not a Service of this render")


def main(path: str) -> int:
    with open(path, encoding="utf-8") as rendered:
        documents = [document for document in yaml.safe_load_all(rendered) if document]
    problems = []
    scaled = {
        document["spec"]["scaleTargetRef"]["name"]
        for document in documents
        if document["kind"] == "HorizontalPodAutoscaler"
    }
    for document in documents:
        kind, name = document["kind"], document["metadata"]["name"]
        if kind == "Deployment" and name in scaled and "replicas" in document["spec"]:
            problems.append(f"Deployment {name} sets replicas, but an HPA scales it")
        if kind == "Namespace":
            labels = document["metadata"].get("labels", {})
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                problems.append(f"Namespace {name} does not enforce the restricted Pod Security Standard")
    check_monitoring(documents, problems)
    check_tracing(documents, problems)
    check_image(documents, problems)
    check_orchestrator_egress(documents, problems)
    check_migration_jobs(documents, problems)
    for problem in problems:
        print(f"{path}: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
