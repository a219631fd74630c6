"""Pure builders: child names, labels, ownerReferences, and the stage ConfigMap / Job / Service dicts.

Where it sits: `reconcile` decides *what* should exist; these functions say *exactly how it looks*. No
I/O, no clock, no randomness: the same run and config always produce the same objects, so a 409 on
create really means "already there".
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..api.base import API_VERSION
from ..api.kinds import STAGES
from ..api.manifest import Resource, RunResource
from ..pipeline.podpolicy import STAGE_CONTAINER, force_restricted
from .config import OperatorConfig
from .merge import strategic_merge
from .observed import (
    ANNOTATION_OUTPUT,
    KUEUE_QUEUE_LABEL,
    LABEL_KIND,
    LABEL_RUN,
    LABEL_STAGE,
    FrozenPlan,
    Storage,
)

SPEC_DIR = "/etc/cai"
SPEC_FILE = f"{SPEC_DIR}/spec.json"
CONTAINER = STAGE_CONTAINER
JOB_NAME_MAX = 60  # 63 minus "-NN": Indexed Job pods are named/hostnamed <job>-<index>
GPU_RESOURCE = "nvidia.com/gpu"
RUN_AS_USER = 65532  # the USER of images/trainer*.Dockerfile (and the operator image)


def child_name(base: str, suffix: str, max_len: int = 63) -> str:
    """`{base}-{suffix}`, or a shortened base plus a hash of the full name when that is too long."""
    name = f"{base}-{suffix}"
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = max(1, max_len - len(suffix) - len(digest) - 2)
    return f"{base[:keep].rstrip('-.')}-{digest}-{suffix}"[:max_len].rstrip("-")


def job_name(run_name: str, stage: str) -> str:
    return child_name(run_name, stage, JOB_NAME_MAX)


def service_name(job: str) -> str:
    """Headless Service of an Indexed Job: a DNS-1035 label (must start with a letter)."""
    return job if job[0].isalpha() else child_name("cai", job, 63)


def configmap_name(res: Resource) -> str:
    return child_name(res.name, f"{res.info.short_name}-spec", 253)


def run_labels(res: Resource, stage: str | None = None) -> dict[str, str]:
    labels = {
        LABEL_RUN: res.name,
        LABEL_KIND: res.kind,
        "app.kubernetes.io/managed-by": "cai-operator",
        "app.kubernetes.io/part-of": "cai",
    }
    if stage:
        labels[LABEL_STAGE] = stage
    return labels


def owner_reference(res: Resource) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": res.kind, "name": res.name, "uid": res.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(res: Resource, name: str, stage: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": res.namespace, "labels": run_labels(res, stage),
            "ownerReferences": [owner_reference(res)], **extra}


def build_configmap(res: Resource, plan: FrozenPlan) -> dict[str, Any]:
    """The run's frozen plan and one StageSpec per stage (key `<stage>.json`, mounted as spec.json)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(res, configmap_name(res)),
            "data": plan.configmap_data()}


def distributed(res: RunResource, stage: str) -> bool:
    """Whether this stage runs as an Indexed Job over several pods (training stages with nodes > 1)."""
    return STAGES[stage][1].trains and res.spec.resources.nodes > 1


def data_parallel(res: RunResource, stage: str) -> bool:
    """Whether this stage runs as an Indexed Job of data-parallel workers (generation stages, workers > 1)."""
    return STAGES[stage][1].shards and res.spec.resources.workers > 1


def build_service(res: RunResource, stage: str) -> dict[str, Any]:
    """Headless Service giving the pods of a distributed stage stable DNS names (<job>-<i>.<svc>)."""
    job = job_name(res.name, stage)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(res, service_name(job), stage),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rank 0 must resolve before any pod is Ready
            "selector": {LABEL_RUN: res.name, LABEL_KIND: res.kind, LABEL_STAGE: stage},
            "ports": [{"name": "rendezvous", "port": 29500, "protocol": "TCP"}],
        },
    }


def _storage_env(storage: Storage) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if storage.endpoint:
        env.append({"name": "CAI_S3_ENDPOINT", "value": storage.endpoint})
    if storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": storage.region})
    if storage.secret_name:
        # Credentials reach the pod only by reference: the operator never reads the Secret.
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {"name": key, "valueFrom": {"secretKeyRef": {"name": storage.secret_name, "key": key}}}
            )
    return env


def _resources(res: RunResource, config: OperatorConfig) -> dict[str, Any]:
    r = res.spec.resources
    values: dict[str, str] = {}
    cpu, memory = r.cpu or config.default_cpu, r.memory or config.default_memory
    if cpu:
        values["cpu"] = cpu
    if memory:
        values["memory"] = memory
    if r.gpus_per_node:
        values[GPU_RESOURCE] = str(r.gpus_per_node)
    return {"requests": dict(values), "limits": dict(values)} if values else {}


def stage_command(res: RunResource, stage: str, config: OperatorConfig) -> list[str]:
    command = ["cai", "stage", stage, "--spec", SPEC_FILE]
    if data_parallel(res, stage):  # each pod's worker index is its JOB_COMPLETION_INDEX
        return [*command, "--workers", str(res.spec.resources.workers)]
    if not distributed(res, stage):
        return command
    # One torchrun agent per pod; pod i is node rank i; rank 0's pod hosts the static rendezvous.
    return ["torchrun", f"--nnodes={res.spec.resources.nodes}", "--nproc-per-node=1",
            "--node-rank=$(JOB_COMPLETION_INDEX)", "--master-addr=$(MASTER_ADDR)",
            "--master-port=$(MASTER_PORT)", "-m", *command]


def build_job(
    res: RunResource, stage: str, plan: FrozenPlan, config: OperatorConfig, suspend: bool = False
) -> dict[str, Any]:
    """The Job of one stage: `cai stage <stage> --spec /etc/cai/spec.json`, spec from the run's ConfigMap."""
    r = res.spec.resources
    name = job_name(res.name, stage)
    labels = run_labels(res, stage)
    if r.queue_name:
        labels[KUEUE_QUEUE_LABEL] = r.queue_name
    multi = distributed(res, stage)
    gpus = r.gpus_per_node
    env: list[dict[str, Any]] = [
        {"name": "CAI_PROGRESS", "value": "log"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *_storage_env(plan.storage),
    ]
    if multi:
        svc = service_name(name)
        env += [{"name": "MASTER_ADDR", "value": f"{name}-0.{svc}"},
                {"name": "MASTER_PORT", "value": str(config.torchrun_port)},
                {"name": "CAI_NNODES", "value": str(r.nodes)}]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": config.image_for(stage, gpus),
        "imagePullPolicy": config.image_pull_policy,
        "command": stage_command(res, stage, config),
        "env": env,
        # The root filesystem is read-only: /tmp (the trainer images' HOME and caches) is the pod's own.
        "volumeMounts": [{"name": "stage-spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePath": "/dev/termination-log",
        # Stages write a one-line reason there; if they die before that, the log tail is used instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    resources = _resources(res, config)
    if resources:
        container["resources"] = resources
    volumes: list[dict[str, Any]] = [{
        "name": "stage-spec",
        "configMap": {"name": configmap_name(res), "items": [{"key": f"{stage}.json", "path": "spec.json"}]},
    }, {"name": "tmp", "emptyDir": {}}]
    if gpus or multi:
        # PyTorch data loaders and NCCL use /dev/shm; the container default (64 MiB) is too small.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    tolerations = [t.to_wire() for t in r.tolerations or []]
    if gpus:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "enableServiceLinks": False,
    }
    if r.node_selector:
        pod_spec["nodeSelector"] = dict(r.node_selector)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if r.priority_class_name:
        pod_spec["priorityClassName"] = r.priority_class_name
    if r.service_account_name:  # allowed by the pod policy (checked by reconcile)
        pod_spec["serviceAccountName"] = r.service_account_name
    else:
        if config.pod_policy.stage_service_account:
            pod_spec["serviceAccountName"] = config.pod_policy.stage_service_account
        pod_spec["automountServiceAccountToken"] = False  # stages never call the Kubernetes API
    if multi:
        pod_spec["subdomain"] = service_name(name)
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    if r.pod_template:  # checked against the pod policy by reconcile, then restricted again here
        template = strategic_merge(template, r.pod_template)
        template["spec"] = force_restricted(template["spec"])
    job_spec: dict[str, Any] = {
        "backoffLimit": r.backoff_limit,
        "ttlSecondsAfterFinished": config.job_ttl_seconds,
        # Kueue admits a queued Job by unsuspending it; otherwise suspend follows spec.suspend.
        "suspend": bool(r.queue_name) or suspend,
        "template": template,
    }
    deadline = r.active_deadline_seconds or config.default_active_deadline_seconds
    if deadline:
        job_spec["activeDeadlineSeconds"] = deadline
    if multi:
        job_spec.update(completionMode="Indexed", completions=r.nodes, parallelism=r.nodes)
    elif data_parallel(res, stage):
        # A failed worker is retried alone (its finished chunks are kept); one out of retries fails the Job.
        del job_spec["backoffLimit"]
        job_spec.update(completionMode="Indexed", completions=r.workers, parallelism=r.workers,
                        backoffLimitPerIndex=r.backoff_limit, maxFailedIndexes=0)
    meta = _meta(res, name, stage, annotations={ANNOTATION_OUTPUT: plan.outputs[stage]})
    meta["labels"] = labels  # with Kueue's queue label: Kueue reads it from the Job
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def build_event(involved: dict[str, Any], type_: str, reason: str, message: str, now_rfc3339: str,
                instance: str) -> dict[str, Any]:
    """A core/v1 Event about `involved` (apiVersion, kind, name, namespace, uid)."""
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
        "involvedObject": involved,
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": "cai-operator"},
        "reportingComponent": "cai.dev/operator", "reportingInstance": instance[:128],
        "firstTimestamp": now_rfc3339, "lastTimestamp": now_rfc3339, "count": 1,
    }


def involved_object(res: Resource) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": res.kind,
        "name": res.name,
        "namespace": res.namespace,
        "uid": res.uid,
    }
