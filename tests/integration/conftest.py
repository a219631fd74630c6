"""Fixtures of the operator tests (tests/integration/operator_support.py) and the report hook they use."""
import pytest

from tests.integration.operator_support import (  # noqa: F401  (pytest fixtures)
    api,
    cai_crds,
    kwok_publisher,
    operator_env,
    operator_sa_kubeconfig,
    start_operator,
)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
