"""The install block of docs/install.md (the README repeats it) on the test control plane's real node.

Run as written, with the cluster's S3 settings in the environment (`source .cache/cluster/s3.env`): the
chart installs, the operator runs from its image (`make images`) in two pods on the real node, takes the
quickstart CritiqueRun the block applies (the fixture checks its first Job appears), and the cluster's
Prometheus finds the chart's metrics Service and scrapes both pods.
"""
from __future__ import annotations

import pytest
import yaml

from tests.cluster.control_plane import REPO
from tests.e2e.conftest import install_block
from tests.integration.operator_support import until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CRD_NAMES = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO / "crds").glob("*.yaml"))


def test_readme_and_install_doc_show_the_same_block():
    block = install_block((REPO / "docs" / "install.md").read_text())
    assert block and install_block((REPO / "README.md").read_text()) == block
    assert len(block.strip().splitlines()) <= 13, "the README's Install section is at most 15 lines"


def test_install_block_runs_the_operator_from_its_image(operator_install, kube_cluster, real_node, s3_server,
                                                        project_images, prometheus):
    out = operator_install.stdout
    assert "successfully rolled out" in out, out
    assert all(name in out for name in CRD_NAMES), out
    assert "quickstart-sl" in out and "harmless" in out, out

    code, dep = kube_cluster.request("GET", "/apis/apps/v1/namespaces/cai-system/deployments/cai-operator")
    assert code == 200, dep
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CAI_STORAGE_URI"] == f"s3://{s3_server.bucket}/runs"
    assert env["CAI_S3_ENDPOINT"] == s3_server.endpoint
    assert env["CAI_STAGE_IMAGE"] == project_images["trainer"]
    code, pods = kube_cluster.request(
        "GET", "/api/v1/namespaces/cai-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dcai-operator")
    running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
    assert len(running) == 2, [p["status"] for p in pods["items"]]
    for pod in running:
        assert pod["spec"]["nodeName"] == real_node.name
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] and status["image"] == project_images["operator"], status
        assert status["containerID"].startswith("containerd://"), status

    # Prometheus discovered the metrics Service's endpoints and scrapes both pods through the node's route.
    ips = {p["status"]["podIP"] for p in running}
    up = prometheus.wait_for('up{job="cai-operator-metrics"} == 1', timeout=60, predicate=lambda r: len(r) == 2)
    assert {r["metric"]["instance"].rsplit(":", 1)[0] for r in up} == ips
    leaders = until("one leader among the replicas", lambda: [
        r for r in prometheus.query('cai_leader{job="cai-operator-metrics"}') if r["value"][1] == "1"], 60)
    assert len(leaders) == 1, leaders
