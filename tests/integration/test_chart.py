"""The Helm chart against the real test control plane (real helm, kube-apiserver, promtool; no mocks).

- `helm lint --strict` on the defaults and on the other install shapes;
- `helm template` of each shape applied with a server-side dry run (the API server validates every object,
  the ServiceMonitor and PrometheusRule against prometheus-operator's real CRDs);
- bad values refused by `helm install` with the field named, and nothing created;
- `helm install` (CRDs present, kept on uninstall, Deployment available on the kwok node), `helm upgrade`
  (new values reach the Deployment, a changed CRD template reaches the CRD), `helm uninstall` (runs and
  CRDs kept, everything else gone);
- (the install block of docs/install.md, which the README repeats, runs in tests/e2e/test_install.py on the
  real node, where the operator's image runs);
- `promtool check rules` and `promtool test rules` on the rendered PrometheusRule, and every metric the
  alerts query is one the operator exports.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster import control_plane as cp

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "cai-operator"
TESTDATA = Path(__file__).parent / "testdata"
CRD_NAMES = sorted(yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO / "crds").glob("*.yaml"))


# Every test here runs helm or promtool, built with the test control plane (make cluster).
pytestmark = pytest.mark.cluster


# ------------------------------------------------------------------------------------------- helpers

def tool(name: str) -> str:
    exe = cp.bin_dir_default() / name
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} not found in {cp.bin_dir_default()} or on PATH: run `make cluster`"
    return found


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm")
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}


def helm(env: dict[str, str], *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    p = subprocess.run([tool("helm"), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO, check=False)
    if check:
        assert p.returncode == 0, f"helm {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
    return p


def sets(values: dict) -> list[str]:
    """--set-json flags for a nested dict of values."""
    return [f"--set-json={k}={json.dumps(v)}" for k, v in values.items()]


def render(env: dict[str, str], release: str, namespace: str, values: dict | None = None,
           chart: Path = CHART) -> list[dict]:
    out = helm(env, "template", release, str(chart), "-n", namespace,
               *sets(values or {})).stdout
    return [d for d in yaml.safe_load_all(out) if d]


SHAPES = {
    "default": {},
    "watch-some-namespaces": {"watchNamespaces": ["{ns}"]},
    "namespaced": {"rbac.scope": "namespaced", "watchNamespaces": ["{ns}"]},
    "monitoring-and-secret": {"metrics.serviceMonitor.enabled": True, "metrics.prometheusRule.enabled": True,
                              "metrics.dashboard.enabled": True, "storage.createSecret": True,
                              "storage.accessKeyId": "AKIAEXAMPLE", "storage.secretAccessKey": "example",
                              "stages.images": {"finetune": "registry.example.com/trainer-gpu:custom"},
                              "replicaCount": 1},
}


def shape(name: str, ns: str) -> dict:
    return json.loads(json.dumps(SHAPES[name]).replace("{ns}", ns))


# --------------------------------------------------------------------------------------- lint / render

@pytest.mark.parametrize("name", sorted(SHAPES))
def test_helm_lint_strict(name, helm_env):
    p = helm(helm_env, "lint", "--strict", str(CHART), *sets(shape(name, "team-a")), check=False)
    assert p.returncode == 0 and "0 chart(s) failed" in p.stdout, p.stdout + p.stderr


def test_helm_knows_its_kubernetes_version(helm_env):
    """helm is built with its Kubernetes version stamp (tests/cluster/build.sh), as released helm is: with
    no cluster and no --kube-version it assumes 1.34 (our client-go), and the chart's kubeVersion is
    still enforced against an explicit older one."""
    out = helm(helm_env, "template", "rel", str(CHART), "--show-only", "templates/deployment.yaml").stdout
    assert "kind: Deployment" in out
    p = helm(helm_env, "template", "rel", str(CHART), "--kube-version=1.28.0", check=False)
    assert p.returncode != 0 and "incompatible with Kubernetes v1.28.0" in p.stderr, p.stderr


def test_rendered_defaults_follow_the_contract(helm_env):
    """What the defaults produce: 2 replicas, probes, restricted security, the CAI_* env of the contract,
    no wildcard or Secret permissions, CRDs kept on uninstall."""
    docs = render(helm_env, "rel", "cai-system")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for crd in CRD_NAMES:
        assert ("CustomResourceDefinition", crd) in kinds
    dep = next(d for d in docs if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    (c,) = spec["containers"]
    assert c["args"][:1] == ["operator"] and "--standalone" not in c["args"]
    assert {c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]} == {"/healthz", "/readyz"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    env = {e["name"]: e for e in c["env"]}
    assert len(env) == len(c["env"]), f"duplicate env names: {[e['name'] for e in c['env']]}"
    for name in ("CAI_STAGE_IMAGE", "CAI_STAGE_IMAGE_GPU", "CAI_STORAGE_URI", "CAI_STORAGE_SECRET",
                 "CAI_JOB_TTL_SECONDS", "CAI_DEFAULT_CPU", "CAI_DEFAULT_MEMORY", "CAI_WATCH_NAMESPACES",
                 "CAI_LEASE_NAME", "POD_NAMESPACE", "POD_NAME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in env, f"Deployment env lacks {name}"
    assert env["CAI_STORAGE_URI"]["value"] == "s3://cai-artifacts/runs"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "cai-storage", "key": "AWS_ACCESS_KEY_ID",
                                                                     "optional": True}
    assert env["CAI_STAGE_IMAGE"]["value"].endswith(":" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    for d in docs:
        if d["kind"] in ("ClusterRole", "Role"):
            for rule in d["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"{d['kind']} {d['metadata']['name']}: wildcard {rule}"
                assert "secrets" not in rule["resources"], f"{d['kind']} {d['metadata']['name']} grants Secrets"
        if d["kind"] == "CustomResourceDefinition":
            assert d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not any(d["kind"] == "Secret" for d in docs), "the chart creates a Secret without storage.createSecret"


def test_crds_disabled_renders_no_crds(helm_env):
    docs = render(helm_env, "rel", "cai-system", {"crds.enabled": False})
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert any(d["kind"] == "Deployment" for d in docs)


def test_namespaced_scope_grants_nothing_cluster_wide(helm_env):
    docs = render(helm_env, "rel", "cai-system", {"rbac.scope": "namespaced",
                                                  "watchNamespaces": ["team-a", "team-b"], "crds.enabled": False})
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"}
    assert {("team-a", "rel-cai-operator"), ("team-b", "rel-cai-operator"),
            ("cai-system", "rel-cai-operator-leader-election")} <= roles
    dep = next(d for d in docs if d["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_gitops_example_values_render(helm_env, tmp_path):
    """The Argo CD Application's valuesObject passes the chart's schema and renders what it asks for."""
    apps = [d for d in yaml.safe_load_all((REPO / "examples" / "gitops" / "argocd-application.yaml").read_text()) if d]
    app = next(a for a in apps if a["spec"]["source"].get("path") == "charts/cai-operator")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(app["spec"]["source"]["helm"]["valuesObject"]))
    out = helm(helm_env, "template", app["spec"]["source"]["helm"]["releaseName"], str(CHART), "-n",
               app["spec"]["destination"]["namespace"], "-f", str(values)).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"ServiceMonitor", "PrometheusRule", "Deployment", "CustomResourceDefinition"} <= kinds, kinds


@pytest.fixture(scope="module")
def monitoring_crds(kube_cluster):
    """prometheus-operator's real ServiceMonitor and PrometheusRule CRDs (testdata/prometheus-operator)."""
    files = sorted((TESTDATA / "prometheus-operator").glob("*.yaml"))
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=cai-chart-tests",
                         *(f"--filename={f}" for f in files))
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    deadline = time.monotonic() + 30
    while kube_cluster.kubectl("get", "prometheusrules", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "prometheusrules not served"
        time.sleep(0.5)


@pytest.mark.cluster
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_template_passes_server_side_dry_run(name, helm_env, kube_cluster, kube_namespace, monitoring_crds):
    values = shape(name, kube_namespace)
    manifest = helm(helm_env, "template", f"r{secrets.token_hex(3)}", str(CHART), "-n", kube_namespace,
                    *sets(values)).stdout
    p = kube_cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=cai-chart-tests",
                             "--force-conflicts", "-n", kube_namespace, "-f", "-", input=manifest, check=False)
    assert p.returncode == 0, p.stderr
    applied = [line for line in p.stdout.splitlines() if "(server dry run)" in line]
    n_docs = len([d for d in yaml.safe_load_all(manifest) if d])
    assert len(applied) == n_docs, p.stdout
    if name == "monitoring-and-secret":
        assert any(line.startswith("prometheusrule.monitoring.coreos.com/") for line in applied), p.stdout
        assert any(line.startswith("servicemonitor.monitoring.coreos.com/") for line in applied), p.stdout


@pytest.mark.cluster
def test_dry_run_really_validates(helm_env, kube_cluster, kube_namespace, monitoring_crds):
    """The dry run is not a rubber stamp: a PrometheusRule with a bad field is refused by the real schema."""
    docs = render(helm_env, "r", kube_namespace, {"metrics.prometheusRule.enabled": True})
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    p = kube_cluster.kubectl("apply", "--server-side", "--dry-run=server", "-n", kube_namespace, "-f", "-",
                             input=json.dumps(rule), check=False)
    assert p.returncode != 0 and "for" in p.stderr, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------- bad values

BAD_VALUES = [
    ({"replicaCount": "two"}, "/replicaCount", "want integer"),
    ({"storage": {"bukket": "x"}}, "/storage", "'bukket'"),
    ({"rbac": {"scope": "global"}}, "/rbac/scope", "'cluster', 'namespaced'"),
    ({"stages": {"images": {"fintune": "img:1"}}}, "/stages/images", "'fintune'"),
    ({"stages": {"defaultResources": {"cpu": "two cores", "memory": "8Gi"}}}, "/stages/defaultResources/cpu", ""),
    ({"metrics": {"prometheusRule": {"stageStuckAfter": "6 hours"}}}, "/metrics/prometheusRule/stageStuckAfter", ""),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", ""),
]


@pytest.mark.cluster
@pytest.mark.parametrize("values,field,detail", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_values_file_is_refused_naming_the_field(values, field, detail, helm_env, kube_cluster,
                                                     kube_namespace, tmp_path):
    env = {**helm_env, "KUBECONFIG": str(kube_cluster.kubeconfig)}
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    release = f"bad-{secrets.token_hex(3)}"
    p = helm(env, "install", release, str(CHART), "-n", kube_namespace, "-f", str(bad), check=False)
    assert p.returncode != 0, p.stdout
    assert "values don't meet the specifications of the schema" in p.stderr, p.stderr
    assert f"at '{field}'" in p.stderr and detail in p.stderr, p.stderr
    # refused before anything was applied: no release, no Deployment
    assert helm(env, "status", release, "-n", kube_namespace, check=False).returncode != 0
    code, _ = kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{kube_namespace}/deployments/{release}-cai-operator")
    assert code == 404


# ------------------------------------------------------------------------------ install / upgrade / uninstall

def _crd(kube_cluster, name: str) -> dict:
    code, crd = kube_cluster.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    assert code == 200, crd
    return crd


def _until(what: str, fn, timeout: float = 120.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


@pytest.mark.cluster
def test_install_upgrade_uninstall(helm_env, kube_cluster, kube_namespace, tmp_path):
    env = {**helm_env, "KUBECONFIG": str(kube_cluster.kubeconfig)}
    ns = kube_namespace
    release = f"cai-{secrets.token_hex(3)}"
    full = f"{release}-cai-operator"
    # Pods on the kwok node (which "runs" them), not on the real node (which has no images here).
    base = [*cp.KWOK_HELM_FLAGS, "--take-ownership"]

    # --- install
    p = helm(env, "install", release, str(CHART), "-n", ns, *base, "--set", "stages.defaultResources.cpu=3",
             "--wait", "--timeout=150s")
    assert "STATUS: deployed" in p.stdout
    for name in CRD_NAMES:
        crd = _crd(kube_cluster, name)
        ann = crd["metadata"]["annotations"]
        assert ann.get("helm.sh/resource-policy") == "keep", ann
        assert ann.get("meta.helm.sh/release-name") == release, "the release does not own the CRD"
        assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
        src = yaml.safe_load((REPO / "crds" / f"cai.dev_{name.split('.')[0]}.yaml").read_text())
        assert crd["spec"]["versions"][0]["schema"] == src["spec"]["versions"][0]["schema"]
    code, dep = kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{full}")
    assert code == 200, dep
    assert dep["spec"]["replicas"] == 2 and dep["status"].get("availableReplicas") == 2, dep["status"]
    env_of = lambda d: {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_of(dep)["CAI_DEFAULT_CPU"] == "3" and env_of(dep)["CAI_LEASE_NAME"] == full
    for path in (f"/api/v1/namespaces/{ns}/serviceaccounts/{full}", f"/api/v1/namespaces/{ns}/services/{full}-metrics",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{full}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{full}",
                 f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{full}-leader-election",
                 f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{full}"):
        assert kube_cluster.request("GET", path)[0] == 200, path
    # a user's resources, which must survive everything below
    kube_cluster.kubectl("apply", "-n", ns, "-f", str(REPO / "constitutions" / "harmless.yaml"))

    # --- upgrade: new values reach the Deployment; a changed CRD template reaches the CRD
    chart2 = tmp_path / "cai-operator"
    shutil.copytree(CHART, chart2)
    tpl = chart2 / "templates" / "crds" / "cai.dev_critiqueruns.yaml"
    marker = "Upgraded by the chart in test_install_upgrade_uninstall."
    text = tpl.read_text()
    assert "  versions:\n  - name: v1alpha1\n" in text
    tpl.write_text(text.replace("  versions:\n  - name: v1alpha1\n",
                                f"  versions:\n  - name: v1alpha1\n    deprecated: true\n    deprecationWarning: {marker}\n", 1))
    p = helm(env, "upgrade", release, str(chart2), "-n", ns, *base, "--reuse-values",
             "--set", "stages.defaultResources.cpu=5", "--set", "replicaCount=1", "--wait", "--timeout=150s")
    assert "REVISION: 2" in p.stdout, p.stdout
    code, dep = kube_cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{full}")
    assert env_of(dep)["CAI_DEFAULT_CPU"] == "5" and dep["spec"]["replicas"] == 1
    crd = _crd(kube_cluster, "critiqueruns.cai.dev")
    assert crd["spec"]["versions"][0].get("deprecationWarning") == marker, "helm upgrade did not upgrade the CRD"
    # ...and back to the real chart, which removes the change again
    helm(env, "upgrade", release, str(CHART), "-n", ns, *base, "--reuse-values", "--wait", "--timeout=150s")
    assert "deprecationWarning" not in _crd(kube_cluster, "critiqueruns.cai.dev")["spec"]["versions"][0]

    # --- uninstall: CRDs and the user's resources stay, the operator's objects go
    p = helm(env, "uninstall", release, "-n", ns, "--wait", "--timeout=120s")
    assert "kept due to the resource policy" in p.stdout + p.stderr, p.stdout + p.stderr
    for name in CRD_NAMES:
        _crd(kube_cluster, name)
    code, body = kube_cluster.request("GET", f"/apis/cai.dev/v1alpha1/namespaces/{ns}/constitutions/harmless")
    assert code == 200, body
    for path in (f"/apis/apps/v1/namespaces/{ns}/deployments/{full}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{full}",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{full}",
                 f"/api/v1/namespaces/{ns}/serviceaccounts/{full}"):
        assert _until(f"{path} to be deleted", lambda p=path: kube_cluster.request("GET", p)[0] == 404, 60)


# ---------------------------------------------------------------------------------------------- alerts

def rendered_rules(env: dict[str, str], tmp_path: Path, values: dict | None = None) -> tuple[Path, str]:
    docs = render(env, "rel", "cai-system", {"metrics.prometheusRule.enabled": True, **(values or {})})
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path, "rel-cai-operator-metrics"


def test_promtool_check_rules(helm_env, tmp_path):
    path, _ = rendered_rules(helm_env, tmp_path)
    p = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert p.returncode == 0 and "SUCCESS" in p.stdout + p.stderr, p.stdout + p.stderr
    alerts = {r["alert"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert {"CaiRunFailed", "CaiStageStuck", "CaiOperatorDown", "CaiReconcileErrors"} <= alerts, alerts


def test_alerts_query_only_exported_metrics(helm_env, tmp_path):
    from tests.unit.test_dashboard import TARGET_LABELS, exported, selectors

    path, _ = rendered_rules(helm_env, tmp_path)
    groups = yaml.safe_load(path.read_text())["groups"]
    have = {**exported(), "up": {"job", "instance"}}
    recorded = {r["record"]: {"kind"} for g in groups for r in g["rules"] if "record" in r}
    problems = []
    for g in groups:
        for r in g["rules"]:
            expr = r["expr"]
            # {__name__=~"a|b|c"} selects several metrics at once
            for alt in re.findall(r'__name__=~"([^"]+)"', expr):
                problems += [f"{n} (in {r.get('alert') or r.get('record')})" for n in alt.split("|") if n not in have]
            for name, labels in selectors(re.sub(r'\{__name__=~"[^"]+",?', "{", expr)):
                known = have[name] if name in have else recorded.get(name)
                if known is None:
                    problems.append(f"{name} (in {r.get('alert') or r.get('record')}) is not exported")
                    continue
                unknown = {lb for lb in labels - known - TARGET_LABELS - {"__name__"}
                           if not any(lb in have.get(n, recorded.get(n, set())) for n, _ in selectors(expr))}
                if unknown:
                    problems.append(f"{name}: labels {sorted(unknown)} unknown (in {r.get('alert') or r.get('record')})")
    assert not problems, "\n".join(problems)


def test_promtool_test_rules_alerts_fire_when_they_should(helm_env, tmp_path):
    """Synthetic series through the real rule engine: each alert fires on its condition and stays quiet
    otherwise (a stuck kind vs. one making progress; the first stage event after a restart counts)."""
    path, job = rendered_rules(helm_env, tmp_path, {"metrics.prometheusRule.stageStuckAfter": "1h",
                                                   "metrics.prometheusRule.additionalAlertLabels": {"team": "ml"}})
    # Annotations are checked by `promtool check rules` (template syntax); here only when alerts fire.
    spec = yaml.safe_load(path.read_text())
    for g in spec["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    path.write_text(yaml.safe_dump(spec))
    base = f'job="{job}", instance="10.0.0.1:8080"'
    tests = {"rule_files": [str(path)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # CritiqueRun: one run Running for 3h; its first Job was created at t=0, nothing since -> stuck
            {"series": f'cai_runs{{{base}, kind="CritiqueRun", namespace="team-a", condition="Running"}}',
             "values": "1x180"},
            {"series": f'cai_jobs_created_total{{{base}, kind="CritiqueRun", stage="generate-revisions"}}',
             "values": "1x180"},
            # PreferenceModel: Running for 3h, a stage event every 30 minutes -> never stuck
            {"series": f'cai_runs{{{base}, kind="PreferenceModel", namespace="team-b", condition="Running"}}',
             "values": "1x180"},
            {"series": f'cai_jobs_created_total{{{base}, kind="PreferenceModel", stage="sample-pairs"}}',
             "values": "1+0x29 2+0x29 3+0x29 4+0x29 5+0x29 6+0x29 7"},
            # one failed RLAIFRun from t=0
            {"series": f'cai_runs{{{base}, kind="RLAIFRun", namespace="team-a", condition="Failed"}}',
             "values": "1x180"},
            # reconcile errors at 1/s for CritiqueRun, none for the others
            {"series": f'cai_reconcile_total{{{base}, kind="CritiqueRun", result="error"}}', "values": "0+60x180"},
            {"series": f'cai_reconcile_total{{{base}, kind="PreferenceModel", result="ok"}}', "values": "0+60x180"},
            # the operator is scrapable for 30m, then not; leader for 30m, then no leader
            {"series": f'up{{{base}}}', "values": "1x30 0x150"},
            {"series": f'cai_leader{{{base}}}', "values": "1x30 0x150"},
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "CaiStageStuck", "exp_alerts": []},
            {"eval_time": "100m", "alertname": "CaiStageStuck", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "team": "ml", "namespace": "team-a", "kind": "CritiqueRun"}}]},
            {"eval_time": "170m", "alertname": "CaiStageStuck", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "team": "ml", "namespace": "team-a", "kind": "CritiqueRun"}}]},
            {"eval_time": "5m", "alertname": "CaiRunFailed", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "team": "ml", "namespace": "team-a", "kind": "RLAIFRun"}}]},
            {"eval_time": "20m", "alertname": "CaiReconcileErrors", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "team": "ml", "kind": "CritiqueRun"}}]},
            {"eval_time": "25m", "alertname": "CaiOperatorDown", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "CaiOperatorDown", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "team": "ml"}}]},
            {"eval_time": "40m", "alertname": "CaiOperatorNoLeader", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "team": "ml"}}]},
        ],
    }]}
    tf = tmp_path / "alerts_test.yaml"
    tf.write_text(yaml.safe_dump(tests))
    p = subprocess.run([tool("promtool"), "test", "rules", str(tf)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
