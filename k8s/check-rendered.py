"""Checks a rendered overlay (kubectl kustomize) for what schema validation
cannot see: a Deployment an HPA scales sets no replicas of its own (an apply
would reset the count the HPA chose), and the namespaces enforce the
restricted Pod Security Standard that every pod is written to meet.

Usage: check-rendered.py RENDERED.yaml; exits 1 naming what is wrong."""

import sys

import yaml


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
    for problem in problems:
        print(f"{path}: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
