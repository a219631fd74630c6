"""The operator's log levels (controller/main.py): kopf's retried requests are warnings, their final
failure an error, so a normal start-up (apiserver still starting, watches cut) logs no ERROR."""

from __future__ import annotations

import io
import logging

import pytest

from cai.controller.main import configure_logging


@pytest.fixture
def operator_log():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    configure_logging("INFO")
    added = [h for h in root.handlers if h not in before]
    assert added, "kopf.configure installs the operator's log handler"
    out = io.StringIO()
    for handler in added:
        handler.setStream(out)  # what it would write to stderr
    yield out.getvalue
    for handler in added:
        root.removeHandler(handler)
    root.setLevel(level)


def test_a_retried_request_is_a_warning_and_its_final_failure_an_error(operator_log):
    api = logging.getLogger("kopf._cogs.clients.api")
    api.error("Request attempt #1/9 failed; will retry: GET https://10.0.0.1/apis/cai.dev/v1alpha1 -> 503")
    api.error("Request attempt #9/9 failed; escalating: GET https://10.0.0.1/apis/cai.dev/v1alpha1 -> 503")
    logging.getLogger("cai.controller").error("something of ours failed; will retry")
    lines = operator_log().splitlines()
    (retry,) = [line for line in lines if "#1/9" in line]
    (final,) = [line for line in lines if "#9/9" in line]
    (ours,) = [line for line in lines if "something of ours" in line]
    assert "[WARNING" in retry and "[ERROR" not in retry, retry
    assert "[ERROR" in final and "[ERROR" in ours, (final, ours)
