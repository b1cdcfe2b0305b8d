"""Renders the Helm chart with the real Helm SDK (helm-python-sdk bundles
Helm v4 as a library), lints it, and validates every rendered object against
the Kubernetes API schemas (kubernetes-validate, offline).

Request (JSON file, argv[1]): {"chart": DIR, "values": {...} | null,
"kube_version": "1.30.0"}.  Prints {"lint": {...}, "objects": [{"kind",
"name", "valid", "errors"}], "manifests": {kind: object, "kind/name": object}}.
"""
import json
import sys

import kubernetes_validate
import yaml
from helm_python import chart as helm_chart

# Custom resources (Prometheus Operator) are not in the Kubernetes schemas.
NOT_CORE = {"ServiceMonitor"}


def main():
    req = json.load(open(sys.argv[1]))
    values = req.get("values")
    kube = req.get("kube_version", "1.30.0")
    lint = helm_chart.lint(req["chart"], values, strict=True, kube_version="v" + kube)
    rendered = helm_chart.Chart.load(req["chart"]).render(values, name="archiver", namespace="data")
    objects, manifests = [], {}
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
            errors = []
            if kind not in NOT_CORE:
                try:
                    kubernetes_validate.validate(doc, kube, strict=True)
                except kubernetes_validate.ValidationError as e:
                    errors.append(str(e.message))
                except Exception as e:  # noqa: BLE001 - report, the test asserts
                    errors.append(f"{type(e).__name__}: {e}")
            objects.append({"kind": kind, "name": name, "valid": not errors, "errors": errors})
            manifests[kind] = doc
            manifests[f"{kind}/{name}"] = doc
    print(json.dumps({"lint": lint, "objects": objects, "manifests": manifests}, default=str))


if __name__ == "__main__":
    main()
