"""Fixtures of the end-to-end tests: the operator fixtures (tests/integration/operator_support.py) and
`local_kubelet`, the test kubelet of node cai-e2e-node (tests/e2e/kubelet.py)."""
import pytest

from tests.e2e.kubelet import LocalKubelet
from tests.integration.operator_support import (  # noqa: F401  (pytest fixtures)
    api,
    cai_crds,
    operator_env,
    operator_sa_kubeconfig,
    start_operator,
)


@pytest.fixture(scope="session")
def local_kubelet(kube_cluster, tmp_path_factory):
    kubelet = LocalKubelet(kube_cluster, tmp_path_factory.mktemp("kubelet")).start()
    yield kubelet
    kubelet.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
