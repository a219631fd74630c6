"""Fixtures of the end-to-end tests: the operator installed as a user installs it, on the real node.

* ``operator_install`` (package) -- the install block of docs/install.md (which the README repeats) run
  as written, with the test control plane's S3 settings in its environment: the chart's operator runs
  from its image in two pods on the real node. The cluster's Prometheus scrapes the pods behind the
  chart's metrics Service (job ``cai-operator-metrics``), registered from its Endpoints as a
  ServiceMonitor would (Debian's Prometheus has no Kubernetes discovery). Uninstalled when the e2e
  package's last test is done: the session's cluster is shared with the integration tests, whose own
  operators must be the only ones acting.
* ``run_namespace`` (function) -- a fresh namespace whose pods must meet the restricted Pod Security
  Standard, with the storage Secret the runs' pods reference; ``api`` (operator_support.Api) works in it.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.cluster.control_plane import REPO, KubeCluster
from tests.integration.operator_support import Api, until

CHART = REPO / "charts" / "cai-operator"
INSTALL_NAMESPACES = ("ml-team", "cai-system")


def install_block(text: str) -> str | None:
    m = re.search(r"<!-- install:begin[^>]*-->\s*```bash\n(.*?)```\s*<!-- install:end -->", text, re.DOTALL)
    return m.group(1) if m else None


def helm_env(kube: KubeCluster, s3_server, home) -> dict[str, str]:
    return {**kube.env, **s3_server.vars, "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}


def _uninstall(kube: KubeCluster, env: dict[str, str]) -> None:
    subprocess.run([str(kube.bin_dir / "helm"), "uninstall", "cai-operator", "-n", "cai-system", "--wait",
                    "--timeout=120s"], env=env, capture_output=True, check=False, timeout=180)
    for ns in INSTALL_NAMESPACES:
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")
    for ns in INSTALL_NAMESPACES:
        until(f"namespace {ns} to go", lambda ns=ns: kube.request("GET", f"/api/v1/namespaces/{ns}")[0] == 404, 180)


METRICS_SERVICE = "cai-operator-metrics"


def scrape_service(kube: KubeCluster, prometheus, namespace: str, service: str) -> list[str]:
    """Point Prometheus at every ready address of the Service's `metrics` port; returns the targets."""
    def endpoints():
        code, ep = kube.request("GET", f"/api/v1/namespaces/{namespace}/endpoints/{service}")
        return [f"{a['ip']}:{p['port']}" for sub in (ep or {}).get("subsets") or [] if code == 200
                for a in sub.get("addresses") or [] for p in sub["ports"] if p.get("name") == "metrics"]
    targets = until(f"ready endpoints of Service {namespace}/{service}", endpoints, 120)
    prometheus.add_target(targets, job=service)
    return targets


@pytest.fixture(scope="package")
def operator_install(kube_cluster, s3_server, project_images, prometheus,
                     tmp_path_factory) -> subprocess.CompletedProcess:
    """The README's install block, run as written; returns the finished process (stdout, stderr)."""
    block = install_block((REPO / "docs" / "install.md").read_text())
    assert block, "docs/install.md has no <!-- install:begin --> bash block"
    env = helm_env(kube_cluster, s3_server, tmp_path_factory.mktemp("helm"))
    _uninstall(kube_cluster, env)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=400, check=False)
    if p.returncode != 0:
        describe = kube_cluster.kubectl("describe", "pods", "-n", "cai-system", check=False).stdout
        pytest.fail(f"the install block failed:\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}\n{describe[-4000:]}",
                    pytrace=False)
    # The block's CritiqueRun (the full-size quickstart) is not what these tests train: once the operator
    # has shown it took the run (its first Job exists), the run goes.
    until("the operator (in its pod) to create the quickstart's first Job",
          lambda: kube_cluster.request("GET", "/apis/batch/v1/namespaces/ml-team/jobs/"
                                       "quickstart-sl-generate-revisions")[0] == 200, 120)
    kube_cluster.request("DELETE", "/apis/cai.dev/v1alpha1/namespaces/ml-team/critiqueruns/quickstart-sl")
    until("both operator replicas ready", lambda: len(scrape_service(kube_cluster, prometheus, "cai-system",
                                                                     METRICS_SERVICE)) == 2, 120)
    yield p
    prometheus.remove_target(METRICS_SERVICE)
    _uninstall(kube_cluster, env)


@pytest.fixture
def run_namespace(kube_cluster, kube_namespace, s3_server, operator_install) -> str:
    """The test's namespace, restricted by Pod Security admission, with the `cai-storage` Secret that the
    chart's default storage hands to stage pods (through secretKeyRef)."""
    kube_cluster.kubectl("label", "namespace", kube_namespace, "pod-security.kubernetes.io/enforce=restricted")
    Api(kube_cluster, kube_namespace).secret("cai-storage", {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                             "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    return kube_namespace


@pytest.fixture
def api(kube_cluster, run_namespace) -> Api:
    return Api(kube_cluster, run_namespace)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
