"""The Grafana dashboard shipped by the chart: it parses, and every metric it queries -- and every label it
filters or groups by -- is one the operator exports (read from the operator's own metrics registry, not
from a list kept here). Prometheus' own `up` is the only outside series allowed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "cai-operator" / "dashboards" / "cai-operator.json"
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
                "unless", "le", "inf", "nan"}


def exported() -> dict[str, set[str]]:
    """{sample name: label names} the operator can expose, from cai.controller.metrics itself."""
    from prometheus_client.metrics_core import Metric

    from cai.controller import metrics

    families: list[Metric] = list(metrics.REGISTRY.collect())
    families += list(metrics.StateCollector(lambda: [
        ("PreferenceModel", "ns", "pm", "Succeeded", {"heldOutAccuracy": 0.7}),
        ("RLAIFRun", "ns", "rl", "Running", {"rewardMean": 0.1, "kl": 0.2}),
    ]).collect())
    out: dict[str, set[str]] = {}
    for fam in families:
        labels = set()
        for s in fam.samples:
            labels |= set(s.labels)
        # Families with labels have no samples until first used: take their declared label names.
        collector = next((c for c in metrics.REGISTRY._collector_to_names
                          if getattr(c, "_name", None) == fam.name), None)
        labels |= set(getattr(collector, "_labelnames", ()) or ())
        labels -= {"le", "quantile"}
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                    "summary": ["_sum", "_count", "_created"]}.get(fam.type, [""])
        for suf in suffixes:
            out[fam.name + suf] = labels | ({"le"} if suf == "_bucket" else set())
        for s in fam.samples:
            out.setdefault(s.name, labels)
    return out


def queries(dash: dict) -> list[str]:
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "expr" and isinstance(v, str) or k == "definition" and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    return exprs


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names used with it) of every series selector in a PromQL expression."""
    lv = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s*,\s*(\w+)\s*\)\s*", expr)
    if lv:  # Grafana's label_values(metric, label)
        return [(lv.group(1), {lv.group(3)} | set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", lv.group(2) or "")))]
    expr = re.sub(r"\$\{?\w+\}?", "X", expr)  # Grafana variables
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    found = []
    # grouping clauses name labels of the inner expression's metrics
    groups = [set(map(str.strip, g.split(","))) - {""} for g in
              re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)]
    grouped = set().union(*groups) if groups else set()
    stripped = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
        name, rest = m.group(0), stripped[m.end():]
        if m.start() and (stripped[m.start() - 1].isalnum() or stripped[m.start() - 1] in "_.:"):
            continue  # the tail of a number or a duration (5m, 1e3)
        if rest.lstrip().startswith("(") or name.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        before = stripped[:m.start()]
        if before.count("{") > before.count("}") or before.count("[") > before.count("]"):
            continue  # a label name/value inside {...}, or a duration inside [...]
        mm = re.match(r"\s*(\{[^}]*\})", rest)
        matchers = mm.group(1) if mm else ""
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        found.append((name, labels | grouped))
    return found


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_parses_and_has_panels(dash):
    assert dash["title"] and dash["uid"] == "cai-operator"
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"]), "panel ids must be unique"
    for p in panels:
        assert p.get("targets"), f"panel {p['title']!r} queries nothing"
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r} hard-codes its data source"


def test_every_queried_metric_and_label_is_exported(dash):
    have = exported()
    have.update(PROMETHEUS_SERIES)
    problems = []
    for expr in queries(dash):
        sels = selectors(expr)
        assert sels, f"no metric found in {expr!r}"
        for name, labels in sels:
            if name not in have:
                problems.append(f"{name} (in {expr!r}) is not exported by cai.controller.metrics")
                continue
            unknown = labels - have[name] - TARGET_LABELS - {"le"}
            # a grouping label may belong to another metric of the same expression
            unknown = {lb for lb in unknown if not any(lb in have.get(n, set()) for n, _ in sels)}
            if unknown:
                problems.append(f"{name} has no label(s) {sorted(unknown)} (in {expr!r})")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_an_unknown_metric():
    have = exported()
    sels = selectors('sum by (kind) (rate(cai_reconciles_totl{job="x"}[5m]))')
    assert [n for n, _ in sels] == ["cai_reconciles_totl"] and "cai_reconciles_totl" not in have
    sels = selectors('max by (namespace) (cai_runs{phase="Failed"})')
    assert sels == [("cai_runs", {"namespace", "phase"})] and "phase" not in have["cai_runs"]


def test_dashboard_covers_the_design_metrics(dash):
    """The metrics platform teams watch (docs/metrics.md) are each on the dashboard."""
    text = " ".join(queries(dash))
    for name in ("cai_runs", "cai_stage_duration_seconds", "cai_stage_failures_total", "cai_reconcile_total",
                 "cai_reconcile_duration_seconds", "cai_tokens_generated_total", "cai_preference_model_accuracy",
                 "cai_policy_reward"):
        assert name in text, f"{name} is not on the dashboard"
