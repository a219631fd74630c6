"""The real node of the test control plane (tests/cluster/node.py): a kubelet on containerd + runc runs pods
as on any cluster, on this machine only.

- the node registers itself Ready with what a kubelet reports (runtime, version, address, real capacity);
  kwok's node is tainted, so only pods that ask for it land there;
- a pod under the restricted Pod Security Standard (enforced on its namespace) really runs non-root, with
  a read-only root, no capabilities, seccomp, its Secret and ConfigMap, and its memory limit;
- a failing pod's exit code and termination message reach its status; `kubectl logs`, `exec` and
  `describe` work through the API server;
- networking: cluster DNS (CoreDNS) answers `<hostname>.<headless service>` with the pod's address,
  the `kubernetes` Service reaches the API server through kube-proxy, a pod reaches a pod, names outside
  the cluster do not resolve, and the cluster's Prometheus scrapes a pod at its address.

Pods run `cai.local/busybox:1` (Debian's static busybox, tests/cluster/build.sh); the project's own images
are the e2e suite's (tests/e2e/).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets

import pytest

from tests.cluster.control_plane import KWOK_NODE
from tests.cluster.node import KWOK_TAINT
from tests.integration.operator_support import until

pytestmark = pytest.mark.cluster

BUSYBOX = "cai.local/busybox:1"
RESTRICTED = {  # the container securityContext of the chart's stage pods
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}


def _pod(name: str, script: str, **spec) -> dict:
    container = {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script],
                 "securityContext": RESTRICTED, "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": spec.pop("labels", {})},
            "spec": {"restartPolicy": "Never", "securityContext": POD_SECURITY, "containers": [container],
                     "terminationGracePeriodSeconds": 1, **spec}}


def _apply(kube, ns: str, *docs: dict) -> None:
    kube.kubectl("apply", "-n", ns, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))


def _get_pod(kube, ns: str, name: str) -> dict:
    code, pod = kube.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
    assert code == 200, pod
    return pod


def _wait_phase(kube, ns: str, name: str, *phases: str, timeout: float = 60) -> dict:
    return until(f"pod {name} {'/'.join(phases)}",
                 lambda: (p := _get_pod(kube, ns, name))["status"].get("phase") in phases and p, timeout,
                 on_timeout=lambda: json.dumps(_get_pod(kube, ns, name)["status"], indent=1)
                  + "\n" + kube.kubectl("describe", "pod", "-n", ns, name, check=False).stdout)


def test_node_registers_as_a_real_kubelet(kube_cluster, real_node):
    code, node = kube_cluster.request("GET", f"/api/v1/nodes/{real_node.name}")
    assert code == 200, node
    info, status = node["status"]["nodeInfo"], node["status"]
    assert info["kubeletVersion"] == "v1.34.10"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6"), info
    assert {"type": "InternalIP", "address": real_node.net.node_ip} in status["addresses"]
    assert int(status["capacity"]["cpu"]) == os.cpu_count()  # this machine's, not a made-up figure
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
    assert not node["spec"].get("taints"), "pods land on the real node by default"
    code, kwok = kube_cluster.request("GET", f"/api/v1/nodes/{KWOK_NODE}")
    assert KWOK_TAINT in kwok["spec"]["taints"]


def test_restricted_pod_runs_confined(kube_cluster, kube_namespace, real_node):
    ns, kube = kube_namespace, kube_cluster
    # The API server's PodSecurity admission refuses anything less than restricted in this namespace.
    kube.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    token = secrets.token_hex(8)
    script = ("echo uid=$(id -u) gid=$(id -g); grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; "
              "(echo x > /rootfs-write) 2>/dev/null && echo root=writable || echo root=read-only; "
              "echo scratch > /scratch/f && cat /scratch/f; cat /conf/greeting; echo; echo secret=$TOKEN; "
              "echo memory-limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)")
    pod = _pod("confined", script, volumes=[{"name": "scratch", "emptyDir": {}},
                                            {"name": "conf", "configMap": {"name": "conf"}}],
               container={"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}],
                          "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                                           {"name": "conf", "mountPath": "/conf"}]})
    _apply(kube, ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"token": token}},
           {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"}, "data": {"greeting": "from-configmap"}},
           pod)
    done = _wait_phase(kube, ns, "confined", "Succeeded", "Failed")
    log = kube.kubectl("logs", "-n", ns, "confined").stdout
    assert done["status"]["phase"] == "Succeeded", log
    assert done["spec"]["nodeName"] == real_node.name
    assert ipaddress.ip_address(done["status"]["podIP"]) in ipaddress.ip_network(real_node.net.pod_cidr)
    lines = log.split()
    for want in ("uid=65532", "gid=65532", "root=read-only", "scratch", "from-configmap", f"secret={token}",
                 f"memory-limit={64 * 2**20}"):
        assert want in lines, log
    status = dict(line.split(":\t") for line in log.splitlines() if line.startswith(("Seccomp", "CapEff", "NoNew")))
    assert status == {"Seccomp": "2", "CapEff": "0000000000000000", "NoNewPrivs": "1"}, log  # 2: filter mode

    # the same pod with privileges is refused before it reaches the node
    loose = _pod("loose", "true", container={"securityContext": {"privileged": True}})
    p = kube.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(loose), check=False)
    assert p.returncode != 0 and "violates PodSecurity" in p.stderr, p.stderr


def test_failure_logs_exec_and_describe(kube_cluster, kube_namespace):
    ns, kube = kube_namespace, kube_cluster
    _apply(kube, ns, _pod("fails", "echo working; echo 'no such prompts: s3://x/y' > /dev/termination-log; exit 3",
                          container={"terminationMessagePolicy": "FallbackToLogsOnError"}),
           _pod("crashes", "echo last words before the crash; exit 4",
                container={"terminationMessagePolicy": "FallbackToLogsOnError"}),
           _pod("sleeps", "echo started; exec sleep 300"))
    failed = _wait_phase(kube, ns, "fails", "Succeeded", "Failed")["status"]["containerStatuses"][0]
    assert failed["state"]["terminated"]["exitCode"] == 3
    assert failed["state"]["terminated"]["message"].strip() == "no such prompts: s3://x/y"
    crashed = _wait_phase(kube, ns, "crashes", "Succeeded", "Failed")["status"]["containerStatuses"][0]
    assert "last words before the crash" in crashed["state"]["terminated"]["message"]  # the log tail
    assert kube.kubectl("logs", "-n", ns, "fails").stdout == "working\n"

    _wait_phase(kube, ns, "sleeps", "Running")
    out = kube.kubectl("exec", "-n", ns, "sleeps", "--", "sh", "-c", "id -u; hostname").stdout.split()
    assert out == ["65532", "sleeps"], out
    until("the log of a running pod", lambda: kube.kubectl("logs", "-n", ns, "sleeps").stdout == "started\n")
    described = kube.kubectl("describe", "pod", "-n", ns, "sleeps").stdout
    for want in (r"Status:\s+Running", rf"Image:\s+{re.escape(BUSYBOX)}", r"kubelet\s+Started container main"):
        assert re.search(want, described), described


def test_cluster_dns_services_and_scraping(kube_cluster, kube_namespace, real_node, prometheus):
    ns, kube = kube_namespace, kube_cluster
    # A server pod named through a headless Service, as a torchrun rendezvous is; it serves /metrics too.
    server = _pod("server", "mkdir -p /www && echo 'cai_node_test_value 42' > /www/metrics && "
                  "echo pong > /www/ping && exec httpd -f -p 8080 -h /www",
                  hostname="rank-0", subdomain="rdzv", labels={"app": "server"},
                  volumes=[{"name": "www", "emptyDir": {}}],
                  container={"volumeMounts": [{"name": "www", "mountPath": "/www"}],
                             "ports": [{"name": "metrics", "containerPort": 8080}]})
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "rdzv"},
                "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "server"},
                         "ports": [{"name": "metrics", "port": 8080}]}}
    _apply(kube, ns, headless, server)
    ip = _wait_phase(kube, ns, "server", "Running")["status"]["podIP"]
    client_script = (f"nslookup rank-0.rdzv.{ns}.svc.cluster.local; wget -qO- http://rank-0.rdzv:8080/ping; "
                     "wget -qO- --no-check-certificate https://kubernetes.default.svc/healthz; echo; "
                     "nslookup example.com >/dev/null 2>&1 && echo outside=resolved || echo outside=unresolved")
    _apply(kube, ns, _pod("client", client_script))
    done = _wait_phase(kube, ns, "client", "Succeeded", "Failed")
    log = kube.kubectl("logs", "-n", ns, "client").stdout
    assert done["status"]["phase"] == "Succeeded", log
    assert f"Address: {ip}" in log, log  # CoreDNS: <hostname>.<subdomain> -> the pod's address
    assert "pong" in log.split(), log  # pod to pod through the bridge
    assert "ok" in log.split(), log  # the `kubernetes` Service (10.0.0.1) -> API server via kube-proxy
    assert "outside=unresolved" in log, log  # no forwarding: nothing leaves this machine

    # Prometheus, on the host, scrapes the pod at its own address (the host routes the pod network to
    # the node's veth).
    job = f"pod-{ns}"
    prometheus.add_target(f"{ip}:8080", job=job)
    try:
        result = prometheus.wait_for(f'cai_node_test_value{{job="{job}"}}', timeout=60)
        assert result[0]["metric"]["instance"] == f"{ip}:8080" and float(result[0]["value"][1]) == 42
    finally:
        prometheus.remove_target(job)
