"""pytest plugin: session fixtures for the real test control plane (registered in tests/conftest.py).

Where it sits: the processes are started and stopped by tests/cluster/control_plane.py (the same code as
`make cluster-up`); this module only decides whether to reuse a running cluster or start one, and hands
tests the views:

* ``kube_cluster`` -- ``.kubeconfig``, ``.env`` (os.environ + KUBECONFIG + binaries on PATH),
  ``.kubectl(*args)``, ``.api_client()``, ``.request(method, path, body)``, ``.create_node(name)``
  (a plain Ready Node that kwok leaves alone), ``.log_tail(component)``.
* ``real_node`` -- the cluster's real node (kubelet + containerd, tests/cluster/node.py): ``.name``,
  ``.net`` (``host_ip``, ``node_ip``, ``pod_cidr``, ...), ``.import_image(archive)``, ``.images()``.
* ``project_images`` -- the images of `make images` (``.cache/images/images.json``) imported into the
  real node's containerd; returns the chart's default references {operator, trainer}, which must be among them.
* ``s3_server`` -- ``.endpoint``, ``.access_key``, ``.secret_key``, ``.bucket``, ``.region``, ``.env``,
  ``.vars`` (only the S3 variables), ``.client()`` (boto3), ``.filesystem()`` (s3fs).
* ``prometheus`` -- the cluster's Prometheus: ``.add_target("127.0.0.1:PORT", job=...)``,
  ``.query(expr)``, ``.wait_for(expr)``, ``.wait_target_up(target)``, ``.url``; and
  ``prometheus_factory(rule_files=..., targets=...)`` for a Prometheus of a test's own.
* ``kube_namespace`` -- a fresh namespace per test (deleted afterwards), so tests can share a cluster.

A cluster already up under .cache/cluster (``make cluster-up``) is reused unless CAI_CLUSTER_REUSE=0;
otherwise the session starts its own in a temporary directory and stops it at the end (its logs are kept
when tests failed). Binaries come from .cache/cluster/bin (``make cluster``) or CAI_CLUSTER_BIN.
Mark tests that use these with ``@pytest.mark.cluster``.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.cluster import control_plane as cp

CHART = cp.REPO / "charts" / "cai-operator"


@pytest.fixture(scope="session")
def _cai_cluster(request: pytest.FixtureRequest):
    if os.environ.get("CAI_CLUSTER_REUSE", "1") != "0":
        shared = cp.Cluster.load(Path(os.environ.get("CAI_CLUSTER_ROOT", cp.DEFAULT_ROOT)))
        if shared is not None and shared.healthy():
            yield shared
            return
    bin_dir = cp.bin_dir_default()
    if not (bin_dir / "kube-apiserver").exists():
        pytest.fail(f"no control-plane binaries in {bin_dir}: run `make cluster` first", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="cai-cluster-"))
    try:
        cluster = cp.up(root, bin_dir, reuse=False, die_with_parent=True, owner="pytest")
    except cp.ClusterError as e:
        cp.down(root)
        pytest.fail(f"test control plane failed to start (logs in {root / 'logs'}):\n{e}", pytrace=False)
    try:
        yield cluster
    finally:
        cp.down(root)
        if request.session.testsfailed:
            print(f"\ncai test cluster logs kept in {root / 'logs'}")
            shutil.rmtree(root / "pki", ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_cluster(_cai_cluster: cp.Cluster) -> cp.KubeCluster:
    return _cai_cluster.kube


@pytest.fixture(scope="session")
def real_node(_cai_cluster: cp.Cluster):
    node = _cai_cluster.node
    if node is None:
        pytest.fail(f"the cluster under {_cai_cluster.root} has no real node (started with --no-node?)",
                    pytrace=False)
    return node


def chart_image_refs() -> dict[str, str]:
    """The operator and CPU trainer image references the chart uses by default."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tag = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return {"operator": f"{values['image']['repository']}:{tag}",
            "trainer": f"{values['stages']['image']['repository']}:{tag}"}


@pytest.fixture(scope="session")
def project_images(real_node) -> dict[str, str]:
    refs = chart_image_refs()
    try:
        have = cp.import_project_images(real_node)
    except cp.ClusterError as e:
        pytest.fail(f"{e} (stage pods on the real node run the project's images)", pytrace=False)
    missing = [r for r in refs.values() if r not in have]
    if missing:
        pytest.fail(f"{cp.IMAGES_JSON} lacks the chart's default images {missing} (it has {have}): run `make images`",
                    pytrace=False)
    return refs


@pytest.fixture(scope="session")
def s3_server(_cai_cluster: cp.Cluster) -> cp.S3Server:
    return _cai_cluster.s3


@pytest.fixture(scope="session")
def prometheus(_cai_cluster: cp.Cluster) -> cp.Prometheus:
    return _cai_cluster.prometheus


@pytest.fixture(scope="session")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory):
    """Start a Prometheus of the test's own: factory(rule_files=[...], targets=["host:port"])."""
    started: list[cp.Prometheus] = []

    def factory(*, rule_files=(), targets=()) -> cp.Prometheus:
        prom = cp.start_prometheus(tmp_path_factory.mktemp("prometheus"), rule_files=rule_files,
                                   targets=targets)
        started.append(prom)
        return prom

    yield factory
    for prom in started:
        prom.stop()


@pytest.fixture
def kube_namespace(kube_cluster: cp.KubeCluster):
    """A fresh namespace (name returned), deleted after the test; waits for its default ServiceAccount."""
    import time

    name = f"t-{secrets.token_hex(4)}"
    code, body = kube_cluster.request("POST", "/api/v1/namespaces",
                                      {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert code == 201, body
    deadline = time.monotonic() + 30
    while kube_cluster.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
        assert time.monotonic() < deadline, "no default ServiceAccount (controller-manager log):\n" + \
            kube_cluster.log_tail("kube-controller-manager")
        time.sleep(0.2)
    yield name
    kube_cluster.request("DELETE", f"/api/v1/namespaces/{name}")
