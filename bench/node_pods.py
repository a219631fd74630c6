"""The test control plane's real node: pod start-up of the CPU trainer image against busybox, in one run.

Reports, for each image, the time from creating a pod (restricted securityContext, as stage pods run) to
its phase Running, median of --pods runs one after another, and the trainer's ratio to busybox (what the
image itself costs: its size, its layers' first use); the node's Ready time after the kubelet starts
(from state.json); the resident memory of the kubelet, containerd and its shims.

    .venv/bin/python bench/node_pods.py [--pods 5]

Needs `make images` (the trainer archive, from .cache/images/images.json) and uses the cluster under
CAI_CLUSTER_ROOT or .cache/cluster when one is up (`make cluster-up`), otherwise starts one in a
temporary directory for the run.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import control_plane as cp
from tests.e2e.conftest import chart_image_refs

BUSYBOX = "cai.local/busybox:1"


def pod(name: str, image: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "main", "image": image, "command": ["sleep", "600"],
                        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}]}}


def start_latency(kube: cp.KubeCluster, ns: str, image: str) -> float:
    name = f"p-{secrets.token_hex(3)}"
    t0 = time.monotonic()
    code, body = kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod(name, image))
    assert code == 201, body
    while True:
        code, body = kube.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        phase = body["status"].get("phase")
        if phase == "Running":
            took = time.monotonic() - t0
            break
        assert phase == "Pending" and time.monotonic() - t0 < 120, body["status"]
        time.sleep(0.05)
    kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", {"gracePeriodSeconds": 0})
    return took


def node_memory_mib(cluster: cp.Cluster) -> dict[str, float]:
    """RSS of the kubelet, containerd and the shims (every process in the node's own cgroup)."""
    procs = Path("/sys/fs/cgroup/pids") / cluster.node.net.cgroup / "node" / "cgroup.procs"
    out: dict[str, float] = {}
    for pid in procs.read_text().split():
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().rsplit("/", 1)[-1]
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
        out[exe] = out.get(exe, 0.0) + rss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=5, help="pods per image (one after another)")
    args = ap.parse_args()
    trainer = chart_image_refs()["trainer"]
    cluster = cp.Cluster.load(Path(os.environ.get("CAI_CLUSTER_ROOT", cp.DEFAULT_ROOT)))
    owned = None
    if cluster is None or not cluster.healthy() or cluster.node is None:
        owned = Path(tempfile.mkdtemp(prefix="cai-bench-"))
        cluster = cp.up(owned, reuse=False, die_with_parent=True, owner="bench")
    try:
        kube, node = cluster.kube, cluster.node
        t0 = time.monotonic()
        cp.import_project_images(node)
        imported = time.monotonic() - t0
        ns = f"bench-{secrets.token_hex(3)}"
        kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cp_deadline = time.monotonic() + 30
        while kube.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] != 200:
            assert time.monotonic() < cp_deadline, "no default ServiceAccount"
            time.sleep(0.2)
        first = start_latency(kube, ns, trainer)  # the image's layers read for the first time
        times = {img: [start_latency(kube, ns, img) for _ in range(args.pods)] for img in (BUSYBOX, trainer)}
        memory = node_memory_mib(cluster)
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")
        med = {img: statistics.median(t) for img, t in times.items()}
        print(json.dumps({
            "node_ready_after_kubelet_start_s": cluster.state["node"].get("ready_after_s"),
            "images_import_s": round(imported, 1),
            "apply_to_running_s": {img: round(m, 2) for img, m in med.items()},
            "trainer_first_pod_s": round(first, 2),
            "trainer_vs_busybox": round(med[trainer] / med[BUSYBOX], 2),
            "node_rss_mib": {k: round(v) for k, v in sorted(memory.items())},
        }, indent=2))
    finally:
        if owned is not None:
            cp.down(owned)


if __name__ == "__main__":
    main()
