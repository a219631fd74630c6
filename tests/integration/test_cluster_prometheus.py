"""Prometheus (Debian's) really scrapes a target we serve, evaluates rules, and promtool checks rule files.

Where it sits: uses the `prometheus` and `prometheus_factory` fixtures (tests/cluster/fixtures.py).
"""
from __future__ import annotations

import secrets
import subprocess

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from tests.cluster.control_plane import free_ports

pytestmark = pytest.mark.cluster


@pytest.fixture
def target():
    """A /metrics endpoint on 127.0.0.1 with a counter and a gauge of our own."""
    registry = CollectorRegistry()
    counter = Counter("cai_it_events", "events seen by the integration test", registry=registry)
    gauge = Gauge("cai_it_level", "a level set by the test", registry=registry)
    (port,) = free_ports(1)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", counter, gauge
    server.shutdown()
    thread.join(5)


def test_scrapes_a_test_target(prometheus, target):
    addr, counter, gauge = target
    job = f"it_{secrets.token_hex(3)}"
    counter.inc(7)
    gauge.set(42.5)
    prometheus.add_target(addr, job=job, labels={"team": "cai"})
    try:
        prometheus.wait_target_up(addr)
        res = prometheus.wait_for(f'cai_it_level{{job="{job}"}}')
        assert float(res[0]["value"][1]) == 42.5
        assert res[0]["metric"]["team"] == "cai"
        counter.inc(3)
        prometheus.wait_for(f'cai_it_events_total{{job="{job}"}} == 10')
        assert float(prometheus.query(f'up{{job="{job}"}}')[0]["value"][1]) == 1.0
    finally:
        prometheus.remove_target(job)


def test_rules_evaluated_by_own_prometheus(prometheus_factory, target, tmp_path):
    addr, _, gauge = target
    gauge.set(3)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "groups:\n- name: cai-it\n  interval: 1s\n  rules:\n"
        "  - record: cai:it_level:doubled\n    expr: 2 * cai_it_level\n"
        "  - alert: CaiItLevelHigh\n    expr: cai_it_level > 2\n    labels: {severity: info}\n")
    prom = prometheus_factory(rule_files=[rules], targets=[addr])
    res = prom.wait_for("cai:it_level:doubled", timeout=40)
    assert float(res[0]["value"][1]) == 6.0
    alerts = prom.wait_for('ALERTS{alertname="CaiItLevelHigh"}', timeout=40)
    assert alerts[0]["metric"]["alertstate"] in ("pending", "firing")


def test_promtool_checks_rules(kube_cluster, tmp_path):
    promtool = str(kube_cluster.bin_dir / "promtool")
    good = tmp_path / "good.yaml"
    good.write_text("groups:\n- name: g\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n- name: g\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up\n")
    ok = subprocess.run([promtool, "check", "rules", str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "SUCCESS: 1 rules found" in ok.stdout
    fail = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True, text=True, check=False)
    assert fail.returncode != 0
    assert "bad.yaml" in fail.stdout + fail.stderr
