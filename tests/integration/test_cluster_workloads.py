"""Workloads on the real control plane: Jobs scheduled onto the kwok node run to Succeeded, the garbage
collector and TTL controller clean up, hand-made Nodes are left alone by kwok, kubectl and helm work.

Where it sits: uses the `kube_cluster` / `kube_namespace` fixtures (tests/cluster/fixtures.py).
"""
from __future__ import annotations

import secrets
import subprocess
import time

import pytest
from kubernetes import client

from tests.cluster.control_plane import KWOK_HELM_FLAGS, KWOK_NODE, KWOK_PLACEMENT

pytestmark = pytest.mark.cluster


def _until(what: str, fn, timeout: float = 60.0, every: float = 0.3, on_timeout=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
        time.sleep(every)


def _job(name: str, **spec_extra) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, **spec_extra, "template": {"spec": {
            "restartPolicy": "Never", **KWOK_PLACEMENT,
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}]}}},
    }


@pytest.fixture
def batch(kube_cluster):
    api = kube_cluster.api_client()
    yield client.BatchV1Api(api), client.CoreV1Api(api)
    api.close()


def test_versions(kube_cluster):
    out = kube_cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.' in out, out
    nodes = kube_cluster.kubectl("get", "nodes", KWOK_NODE, "-o",
                                 "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout
    assert nodes == "True"


def test_job_pod_runs_on_kwok_node_to_success(kube_cluster, kube_namespace, batch):
    jobs, core = batch
    jobs.create_namespaced_job(kube_namespace, _job("hello"))

    def pods():
        return core.list_namespaced_pod(kube_namespace, label_selector="job-name=hello").items

    logs = lambda: "\n".join(kube_cluster.log_tail(c, 15) for c in
                             ("kube-controller-manager", "kube-scheduler", "kwok"))
    _until("a pod of the Job", pods, on_timeout=logs)
    _until("the Job to complete",
           lambda: any(c.type == "Complete" and c.status == "True"
                       for c in (jobs.read_namespaced_job_status("hello", kube_namespace).status.conditions or [])),
           on_timeout=logs)
    (pod,) = pods()
    assert pod.spec.node_name == KWOK_NODE
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    job = jobs.read_namespaced_job("hello", kube_namespace)
    assert job.status.succeeded == 1 and not job.status.failed


def test_indexed_job_runs_all_completions(kube_cluster, kube_namespace, batch):
    jobs, core = batch
    jobs.create_namespaced_job(kube_namespace, _job("indexed", completions=3, parallelism=3,
                                                    completionMode="Indexed"))
    _until("3 completions", lambda: (jobs.read_namespaced_job_status("indexed", kube_namespace).status.succeeded
                                     or 0) == 3)
    idx = sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]
                 for p in core.list_namespaced_pod(kube_namespace, label_selector="job-name=indexed").items)
    assert idx == ["0", "1", "2"]


def test_deleting_owner_garbage_collects_job(kube_cluster, kube_namespace, batch):
    jobs, core = batch
    owner = core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    job = _job("owned")
    job["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                           "uid": owner.metadata.uid, "controller": True,
                                           "blockOwnerDeletion": True}]
    jobs.create_namespaced_job(kube_namespace, job)
    _until("the owned Job's pod", lambda: core.list_namespaced_pod(kube_namespace,
                                                                   label_selector="job-name=owned").items)
    core.delete_namespaced_config_map("owner", kube_namespace)

    def gone():
        try:
            jobs.read_namespaced_job("owned", kube_namespace)
            return False
        except client.ApiException as e:
            return e.status == 404

    _until("the garbage collector to delete the Job", gone,
           on_timeout=lambda: kube_cluster.log_tail("kube-controller-manager"))
    _until("the Job's pods to be collected too",
           lambda: not core.list_namespaced_pod(kube_namespace, label_selector="job-name=owned").items)


def test_ttl_after_finished_deletes_job(kube_cluster, kube_namespace, batch):
    jobs, _ = batch
    jobs.create_namespaced_job(kube_namespace, _job("short-lived", ttlSecondsAfterFinished=0))

    def gone():
        try:
            jobs.read_namespaced_job("short-lived", kube_namespace)
            return False
        except client.ApiException as e:
            return e.status == 404

    _until("the TTL controller to delete the finished Job", gone)


def test_plain_node_is_ready_and_not_managed_by_kwok(kube_cluster, kube_namespace, batch):
    """A plain Node object (test_rbac's kind of node): Ready, schedulable, but kwok leaves its pods alone
    for a test to run."""
    _, core = batch
    name = f"cai-plain-node-{secrets.token_hex(3)}"
    kube_cluster.create_node(name, labels={"cai.dev/test": "plain"})
    try:
        assert kube_cluster.node_ready(name)
        core.create_namespaced_pod(kube_namespace, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waits"},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": name}, "restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}]}})
        pod = _until("the scheduler to bind the pod",
                     lambda: (p := core.read_namespaced_pod("waits", kube_namespace)).spec.node_name and p)
        assert pod.spec.node_name == name
        time.sleep(3)  # kwok would have made it Running (and Succeeded for Jobs) by now
        pod = core.read_namespaced_pod("waits", kube_namespace)
        assert pod.status.phase == "Pending" and not pod.status.container_statuses, pod.status
        # what the e2e "kubelet" fixture does: write the pod's status itself
        core.patch_namespaced_pod_status("waits", kube_namespace, {"status": {"phase": "Succeeded"}})
        assert core.read_namespaced_pod("waits", kube_namespace).status.phase == "Succeeded"
        # no kubelet confirms deletion on this node, so force it
        core.delete_namespaced_pod("waits", kube_namespace, grace_period_seconds=0)
    finally:
        kube_cluster.delete_node(name)


def test_helm_installs_a_chart(kube_cluster, kube_namespace, tmp_path):
    version = subprocess.run([str(kube_cluster.bin_dir / "helm"), "version", "--short"],
                             capture_output=True, text=True, env=kube_cluster.env, check=True).stdout
    assert version.startswith("v3."), version
    helm = lambda *a: subprocess.run([str(kube_cluster.bin_dir / "helm"), *a],
                                     capture_output=True, text=True, env={**kube_cluster.env,
                                     "HELM_CACHE_HOME": str(tmp_path / "c"), "HELM_CONFIG_HOME": str(tmp_path / "g"),
                                     "HELM_DATA_HOME": str(tmp_path / "d")}, timeout=180, check=False)
    p = helm("create", str(tmp_path / "demo"))
    assert p.returncode == 0, p.stderr
    p = helm("install", "demo", str(tmp_path / "demo"), "-n", kube_namespace, "--wait", "--timeout=90s",
             *KWOK_HELM_FLAGS)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "STATUS: deployed" in p.stdout
    ready = kube_cluster.kubectl("get", "deploy", "demo", "-n", kube_namespace, "-o",
                                 "jsonpath={.status.readyReplicas}").stdout
    assert ready == "1"
    p = helm("uninstall", "demo", "-n", kube_namespace, "--wait")
    assert p.returncode == 0, p.stderr
