#!/usr/bin/env python3
"""Writes charts/cai-operator/values.schema.json (the schema is kept here, in Python, to stay readable).

Run `python charts/cai-operator/hack/schema.py` after changing it; tests/unit/test_chart_files.py fails
when values.schema.json, values.yaml or docs/configuration.md disagree with it.
Every object is closed (additionalProperties: false) so a misspelt key fails `helm install` naming it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHART.parents[1] / "operator"))

from cai.api.kinds import STAGES  # the stage registry: one image setting per stage

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
PROM_DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
IMAGE_REF = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$"


def obj(desc: str, props: dict, required: list[str] | None = None) -> dict:
    out = {"type": "object", "description": desc, "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


def s(desc: str, **kw) -> dict:
    return {"type": "string", "description": desc, **kw}


def free(desc: str, typ: str = "object") -> dict:
    """A Kubernetes-typed value passed through as is (validated by the API server)."""
    return {"type": typ, "description": desc}


def quantity(desc: str) -> dict:
    """A Kubernetes quantity: a string like 500m or 8Gi, or a plain number (what --set 2 gives)."""
    return {"type": ["string", "number"], "description": desc, "pattern": QUANTITY, "minimum": 0}


def string_map(desc: str) -> dict:
    return {"type": "object", "description": desc, "additionalProperties": {"type": "string"}}


def image(desc: str) -> dict:
    return obj(desc, {
        "repository": s("Image repository (registry/name).", minLength=1, pattern=IMAGE_REF),
        "tag": s("Image tag; empty means the chart's appVersion.", pattern=r"^([\w][\w.-]{0,127})?$"),
        "digest": s("Image digest (sha256:<64 hex>); when set it is used instead of the tag.",
                    pattern=r"^(sha256:[a-f0-9]{64})?$"),
    }, ["repository"])


def names(desc: str, pattern: str = DNS_SUBDOMAIN) -> dict:
    return {"type": "array", "description": desc, "uniqueItems": True, "items": {"type": "string", "pattern": pattern}}


POD_POLICY = {
    "serviceAccountNames": names("ServiceAccounts runs may name in spec.resources.serviceAccountName."),
    "secretNames": names("Secrets a podTemplate may use (env secretKeyRef, secret volumes)."),
    "volumeTypes": {**names("Volume types beyond emptyDir, configMap, downwardAPI, projected, ephemeral and "
                            "secret (hostPath and gitRepo never).", r"^[a-zA-Z]+$"),
                    "not": {"contains": {"enum": ["hostPath", "gitRepo"]}}},
    "envNames": names("Environment variable names (fnmatch patterns: * and ?) beyond the defaults.",
                      r"^[A-Za-z0-9_*?]+$"),
}


SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "cai-operator chart values",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "replicaCount": {"type": "integer", "minimum": 1, "maximum": 5, "description":
                         "Operator replicas. They elect a leader on a Lease in the release namespace: one "
                         "reconciles, the others keep their caches warm and take over within seconds."},
        "image": obj("The operator image (images/operator.Dockerfile: slim, no torch).", {
            **image("")["properties"],
            "pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
                           "description": "Image pull policy of the operator container."},
        }, ["repository"]),
        "imagePullSecrets": {"type": "array", "description": "Pull secrets of the operator pods ([{name}]).",
                             "items": obj("A LocalObjectReference.", {"name": s("Secret name.", minLength=1)},
                                          ["name"])},
        "nameOverride": s("Overrides the chart name in object names.", maxLength=40),
        "fullnameOverride": s("Overrides the full object name prefix (default <release>-cai-operator).",
                              maxLength=52, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"),
        "crds": obj("The CustomResourceDefinitions.", {
            "enabled": {"type": "boolean", "description":
                        "Install and upgrade the cai.dev CRDs with the release. "
                        "They carry helm.sh/resource-policy=keep: `helm uninstall` never deletes them, "
                        "so runs and constitutions survive. Disable when CRDs are managed elsewhere."},
        }),
        "rbac": obj("Roles and bindings of the operator's ServiceAccount (least privilege; no Secrets).", {
            "create": {"type": "boolean", "description": "Create the ClusterRole/Roles and their bindings."},
            "scope": {"type": "string", "enum": ["cluster", "namespaced"], "description":
                      "cluster: a ClusterRole, bound cluster-wide (watchNamespaces empty) or in each watched "
                      "namespace. namespaced: a Role and RoleBinding per watched namespace (default: the "
                      "release namespace) and nothing cluster-wide."},
            "userRoles": obj("ClusterRoles for the people who use the operator.", {
                "create": {"type": "boolean", "description":
                           "Create <fullname>-run-author (write runs and Constitutions) and <fullname>-run-viewer "
                           "(read them). Rendered with rbac.scope=cluster only."},
                "aggregate": {"type": "boolean", "description":
                              "Aggregate them into the built-in edit/admin and view ClusterRoles."},
            }),
        }),
        "watchNamespaces": {"type": "array", "uniqueItems": True, "maxItems": 100, "description":
                            "Namespaces the operator serves. Empty: all namespaces (rbac.scope=cluster) or the "
                            "release namespace (rbac.scope=namespaced).",
                            "items": {"type": "string", "pattern": DNS_LABEL}},
        "serviceAccount": obj("The operator's ServiceAccount.", {
            "create": {"type": "boolean", "description": "Create the ServiceAccount."},
            "name": s("Its name; empty means the release's full name (required when create is false).",
                      pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", maxLength=253),
            "annotations": string_map("Annotations, e.g. eks.amazonaws.com/role-arn for IRSA."),
        }),
        "stages": obj("The stage Jobs the operator creates for each run.", {
            "image": image("Image of CPU stage pods (images/trainer.Dockerfile)."),
            "gpuImage": image("Image of stage pods that request GPUs (images/trainer-gpu.Dockerfile)."),
            "imagePullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
                                "description": "Image pull policy of stage pods."},
            "images": obj("Per-stage image overrides (full image references), e.g. "
                          "{finetune: registry.example.com/trainer:tag}.",
                          {name: s(f"Image of the {name} stage.", minLength=1, pattern=IMAGE_REF)
                           for name in STAGES}),
            "defaultResources": obj("CPU and memory of a stage pod when its run sets none.", {
                "cpu": quantity("CPU request and limit (a quantity: 2, 500m)."),
                "memory": quantity("Memory request and limit (a quantity: 8Gi)."),
            }, ["cpu", "memory"]),
            "jobTTLSeconds": {"type": "integer", "minimum": 0, "description":
                              "Seconds a finished stage Job (its pods and logs) is kept before Kubernetes "
                              "deletes it (ttlSecondsAfterFinished)."},
            "activeDeadlineSeconds": {"type": "integer", "minimum": 0, "description":
                                      "Deadline of each stage Job when a run sets no "
                                      "spec.resources.activeDeadlineSeconds; 0: none."},
            "podStartTimeoutSeconds": {"type": "integer", "minimum": 1, "description":
                                       "A stage whose pods have not started this long after its Job did gets "
                                       "the PodsNotStarted condition, saying why."},
            "serviceAccount": obj("The ServiceAccount of stage pods whose run names none.", {
                "name": s("Its name; empty: the namespace's default ServiceAccount, without its token. Always "
                          "allowed by the pod policy.", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
                          maxLength=253),
                "create": {"type": "boolean", "description":
                           "Create it (no RBAC, token not mounted) in each of watchNamespaces."},
                "annotations": string_map("Annotations, e.g. eks.amazonaws.com/role-arn for IRSA."),
            }),
            "podPolicy": obj("What runs may set in their stage pods beyond the defaults "
                             "(docs/operator.md#pod-policy).", {
                **POD_POLICY,
                "namespaces": {"type": "object", "description":
                               "Per-namespace additions: {namespace: {serviceAccountNames, secretNames, "
                               "volumeTypes, envNames}}.",
                               "propertyNames": {"pattern": DNS_LABEL},
                               "additionalProperties": obj("Additions in one namespace.", POD_POLICY)},
            }),
        }),
        "storage": obj("Default artifact storage (a run's spec.storage, then its namespace's cai-storage "
                       "ConfigMap, override it).", {
            "bucket": s("S3 bucket of the default storage root s3://<bucket>/<prefix>; empty: no default, "
                        "runs must name their storage.", pattern=r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$"),
            "prefix": s("Key prefix under the bucket.", pattern=r"^[^\s]*$", maxLength=512),
            "endpoint": s("S3 endpoint URL (MinIO, Ceph, ...); empty means AWS S3.",
                          pattern=r"^(https?://[^\s]+)?$"),
            "secretName": s("Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: the operator gets it "
                            "from the release namespace (secretKeyRef) to read stage manifests; stage pods get "
                            "the Secret of this name in their run's namespace. Empty: no credentials (IRSA, "
                            "workload identity, anonymous).", pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
                            maxLength=253),
            "createSecret": {"type": "boolean", "description":
                             "Create that Secret in the release namespace from accessKeyId/secretAccessKey "
                             "(trials; in production create it out of band)."},
            "accessKeyId": s("Access key of the created Secret (createSecret only)."),
            "secretAccessKey": s("Secret key of the created Secret (createSecret only)."),
        }),
        "extraEnv": {"type": "array", "description": "Extra environment variables of the operator (EnvVar list).",
                     "items": {"type": "object", "required": ["name"],
                               "properties": {"name": {"type": "string", "minLength": 1}}}},
        "extraArgs": {"type": "array", "description": "Extra arguments of `cai operator`.",
                      "items": {"type": "string"}},
        "resources": obj("Resources of the operator container.", {
            "requests": string_map("Requests (cpu, memory)."),
            "limits": string_map("Limits (cpu, memory)."),
        }),
        "podSecurityContext": free("Pod securityContext (default: restricted, UID 65532, RuntimeDefault seccomp)."),
        "securityContext": free("Container securityContext (default: restricted, read-only root filesystem, "
                                "no capabilities)."),
        "podAnnotations": string_map("Annotations of the operator pods."),
        "podLabels": string_map("Extra labels of the operator pods."),
        "nodeSelector": string_map("Node selector of the operator pods."),
        "tolerations": free("Tolerations of the operator pods.", "array"),
        "affinity": free("Affinity of the operator pods."),
        "topologySpreadConstraints": free("Topology spread constraints; empty renders a soft spread over nodes "
                                          "when replicaCount > 1.", "array"),
        "priorityClassName": s("PriorityClass of the operator pods."),
        "podDisruptionBudget": obj("PodDisruptionBudget of the operator.", {
            "enabled": {"type": "boolean", "description":
                        "Allow at most one replica down in voluntary disruptions (rendered when replicaCount > 1)."},
        }),
        "health": obj("Liveness/readiness endpoint.", {
            "port": {"type": "integer", "minimum": 1024, "maximum": 65535,
                     "description": "Port of /healthz (non-root: above 1023)."},
        }),
        "metrics": obj("Prometheus metrics, alerts and the Grafana dashboard.", {
            "port": {"type": "integer", "minimum": 1024, "maximum": 65535,
                     "description": "Port of /metrics (non-root: above 1023)."},
            "service": obj("The metrics Service.", {
                "enabled": {"type": "boolean", "description": "Create the metrics Service."},
                "type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"],
                         "description": "Service type."},
                "annotations": string_map("Annotations, e.g. prometheus.io/scrape for annotation-based discovery."),
            }),
            "serviceMonitor": obj("A prometheus-operator ServiceMonitor (needs its CRDs).", {
                "enabled": {"type": "boolean", "description": "Create a ServiceMonitor for the metrics Service (needs prometheus-operator's CRDs)."},
                "interval": s("Scrape interval.", pattern=PROM_DURATION),
                "scrapeTimeout": s("Scrape timeout.", pattern=PROM_DURATION),
                "labels": string_map("Extra labels (e.g. the release label your Prometheus selects)."),
            }),
            "prometheusRule": obj("A prometheus-operator PrometheusRule with the operator's alerts.", {
                "enabled": {"type": "boolean", "description": "Create the PrometheusRule with the operator's alerts (needs prometheus-operator's CRDs)."},
                "labels": string_map("Extra labels of the PrometheusRule object."),
                "stageStuckAfter": s("A stage Job running longer than this fires CaiStageStuck.",
                                     pattern=PROM_DURATION),
                "reconcileErrorRate": {"type": "number", "exclusiveMinimum": 0, "description":
                                       "Reconcile errors per second (5m rate, per kind) above which "
                                       "CaiReconcileErrors fires."},
                "operatorDownFor": s("How long no replica may be scrapable before CaiOperatorDown fires.",
                                     pattern=PROM_DURATION),
                "additionalAlertLabels": string_map("Extra labels on every alert."),
            }),
            "dashboard": obj("The Grafana dashboard ConfigMap.", {
                "enabled": {"type": "boolean", "description": "Create the ConfigMap holding the Grafana dashboard."},
                "namespace": s("Its namespace (where Grafana's sidecar looks); empty: the release namespace.",
                               pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"),
                "labels": string_map("Labels the Grafana sidecar selects dashboards by."),
            }),
        }),
    },
}


def main() -> int:
    path = CHART / "values.schema.json"
    text = json.dumps(SCHEMA, indent=2) + "\n"
    check = "--check" in sys.argv[1:]
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is stale: run python {Path(__file__).relative_to(CHART.parents[1])}", file=sys.stderr)
            return 1
        return 0
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
