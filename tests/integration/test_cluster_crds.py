"""The project's CRDs on a real kube-apiserver: server-side apply, every example CR created and read back
with its status subresource and printer columns, invalid CRs rejected by the schema and CEL rules.

Where it sits: uses the `kube_cluster` / `kube_namespace` fixtures (tests/cluster/fixtures.py); the CRDs are
generated into crds/ by `cai crds`, the examples live in examples/ and constitutions/.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.control_plane import REPO

pytestmark = pytest.mark.cluster

CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))
GROUP = "cai.dev"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def _docs(paths) -> list[tuple[str, dict]]:
    out = []
    for path in paths:
        for i, doc in enumerate(yaml.safe_load_all(Path(path).read_text())):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
                out.append((f"{Path(path).relative_to(REPO)}#{i}", doc))
    return out


EXAMPLES = _docs(sorted({*REPO.glob("examples/**/*.yaml"), *REPO.glob("examples/**/*.yml"),
                         *REPO.glob("constitutions/*.yaml")}))


@pytest.fixture(scope="module")
def crds(kube_cluster) -> dict[str, dict]:
    """Apply crds/*.yaml server-side; returns {kind: CRD as stored}, each Established."""
    assert CRD_FILES, "crds/ has no CRDs (make crds)"
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=cai-tests",
                         *(f"--filename={p}" for p in CRD_FILES))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in CRD_FILES]
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *(f"crd/{n}" for n in names))
    out = {}
    for n in names:
        code, crd = kube_cluster.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
        assert code == 200, crd
        out[crd["spec"]["names"]["kind"]] = crd
    # discovery catches up a moment after Established; kubectl needs it for short names
    deadline = time.monotonic() + 30
    while kube_cluster.kubectl("get", "crun", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, kube_cluster.kubectl("get", "crun", "-A", check=False).stderr
        time.sleep(0.5)
    return out


def _served(crd: dict) -> dict:
    return next(v for v in crd["spec"]["versions"] if v.get("storage"))


def _path(crd: dict, ns: str, name: str = "") -> str:
    v = _served(crd)["name"]
    return f"/apis/{GROUP}/{v}/namespaces/{ns}/{crd['spec']['names']['plural']}" + (f"/{name}" if name else "")


def _subset(want, got, where="spec") -> None:
    """Every value in `want` is in `got` (the server may add defaults)."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        for k, v in want.items():
            assert k in got, f"{where}.{k} missing from what the server stored"
            _subset(v, got[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (w, g) in enumerate(zip(want, got)):
            _subset(w, g, f"{where}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        assert float(want) == float(got), f"{where}: {got!r} != {want!r}"
    else:
        assert want == got, f"{where}: {got!r} != {want!r}"


def test_crds_apply_server_side(crds, kube_cluster):
    assert len(crds) == len(CRD_FILES)
    for kind, crd in crds.items():
        conds = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conds.get("Established") == "True" and conds.get("NamesAccepted") == "True", (kind, conds)
        managers = {(m["manager"], m["operation"]) for m in crd["metadata"]["managedFields"]}
        assert ("cai-tests", "Apply") in managers, managers
        assert "status" in _served(crd).get("subresources", {}), f"{kind} has no status subresource"
    # applying again is a no-op for server-side apply (same manager, same content)
    out = kube_cluster.kubectl("apply", "--server-side", "--field-manager=cai-tests",
                               *(f"--filename={p}" for p in CRD_FILES)).stdout
    assert "serverside-applied" in out


def test_there_are_examples():
    kinds = {doc["kind"] for _, doc in EXAMPLES}
    assert "Constitution" in kinds, f"no Constitution among examples/ and constitutions/: {kinds}"


@pytest.mark.parametrize("where,doc", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_created_with_status_and_columns(where, doc, crds, kube_cluster, kube_namespace):
    crd = crds[doc["kind"]]
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("namespace", None)
    name = doc["metadata"]["name"]
    created = kube_cluster.kubectl("create", "-n", kube_namespace, "-o", "json", "-f", "-",
                                   input=json.dumps(doc))
    assert json.loads(created.stdout)["metadata"]["name"] == name

    code, got = kube_cluster.request("GET", _path(crd, kube_namespace, name))
    assert code == 200, got
    _subset(doc.get("spec", {}), got["spec"])

    # status subresource: the main endpoint ignores status, /status stores it
    cols = _served(crd).get("additionalPrinterColumns", [])
    cond_col = next((c for c in cols if ".status.conditions[?(@.type==" in c["jsonPath"]), None)
    ctype = cond_col["jsonPath"].split('=="')[1].split('"')[0] if cond_col else "Ready"
    status = {"status": {"observedGeneration": got["metadata"]["generation"],
                         "conditions": [{"type": ctype, "status": "True", "reason": "IntegrationTest",
                                         "message": "written by the test",
                                         "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}
    code, body = kube_cluster.request("PATCH", _path(crd, kube_namespace, name), status,
                                      content_type="application/merge-patch+json")
    assert code == 200, body
    assert not (body.get("status") or {}).get("conditions"), "status written through the main endpoint"
    code, body = kube_cluster.request("PATCH", _path(crd, kube_namespace, name) + "/status", status,
                                      content_type="application/merge-patch+json")
    assert code == 200, body
    code, body = kube_cluster.request("GET", _path(crd, kube_namespace, name) + "/status")
    assert code == 200 and body["status"]["conditions"][0]["reason"] == "IntegrationTest", body

    # printer columns: the server's Table has exactly the CRD's columns, and kubectl prints them
    code, table = kube_cluster.request("GET", _path(crd, kube_namespace) + f"?fieldSelector=metadata.name%3D{name}",
                                       accept=TABLE)
    assert code == 200 and table["kind"] == "Table", table
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name"] + [c["name"] for c in cols]
    wide = kube_cluster.kubectl("get", crd["spec"]["names"]["plural"], name, "-n", kube_namespace,
                                "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME"] + [c["name"].upper() for c in cols], wide
    assert wide[1].split()[0] == name
    if cond_col:
        assert "IntegrationTest" in wide[1].split(), wide


def test_kubectl_get_crun_shows_columns(crds, kube_cluster, kube_namespace):
    crd = crds["CritiqueRun"]
    cr = {"apiVersion": f"{GROUP}/{_served(crd)['name']}", "kind": "CritiqueRun",
          "metadata": {"name": "columns"}, "spec": {"constitutionRef": {"name": "harmless"}}}
    kube_cluster.kubectl("create", "-n", kube_namespace, "-f", "-", input=json.dumps(cr))
    kube_cluster.request("PATCH", _path(crd, kube_namespace, "columns") + "/status",
                         {"status": {"conditions": [{"type": "Succeeded", "status": "False",
                                                     "reason": "Running", "message": ""}]}},
                         content_type="application/merge-patch+json")
    lines = kube_cluster.kubectl("get", "crun", "-n", kube_namespace).stdout.splitlines()
    default_cols = [c["name"].upper() for c in _served(crd)["additionalPrinterColumns"] if not c.get("priority")]
    assert lines[0].split() == ["NAME", *default_cols], lines
    assert lines[1].split()[:2] == ["columns", "Running"], lines
    # `kubectl get cai` lists the whole category
    assert "critiquerun.cai.dev/columns" in kube_cluster.kubectl("get", "cai", "-n", kube_namespace,
                                                                "-o", "name").stdout


def _create_raw(kube_cluster, crd, ns, obj) -> tuple[int, dict]:
    return kube_cluster.request("POST", _path(crd, ns), obj)


def test_schema_rejects_out_of_range_field(crds, kube_cluster, kube_namespace):
    crd = crds["CritiqueRun"]
    bad = {"apiVersion": f"{GROUP}/{_served(crd)['name']}", "kind": "CritiqueRun",
           "metadata": {"name": "too-many-gpus"},
           "spec": {"constitutionRef": {"name": "harmless"}, "resources": {"gpusPerNode": 99}}}
    code, status = _create_raw(kube_cluster, crd, kube_namespace, bad)
    assert code == 422, status
    fields = [c.get("field") for c in status["details"]["causes"]]
    assert "spec.resources.gpusPerNode" in fields, status
    assert "less than or equal to 16" in status["message"], status["message"]
    # and kubectl shows the field to a person
    p = kube_cluster.kubectl("create", "-n", kube_namespace, "-f", "-", input=json.dumps(bad), check=False)
    assert p.returncode != 0 and "spec.resources.gpusPerNode" in p.stderr, p.stderr
    assert kube_cluster.request("GET", _path(crd, kube_namespace, "too-many-gpus"))[0] == 404


def test_cel_rule_rejects_with_field(crds, kube_cluster, kube_namespace):
    crd = crds["PreferenceModel"]
    bad = {"apiVersion": f"{GROUP}/{_served(crd)['name']}", "kind": "PreferenceModel",
           "metadata": {"name": "two-policies"},
           "spec": {"constitutionRef": {"name": "harmless"},
                    "policy": {"critiqueRunRef": {"name": "a"}, "model": "builtin:tiny-random"}}}
    code, status = _create_raw(kube_cluster, crd, kube_namespace, bad)
    assert code == 422, status
    causes = status["details"]["causes"]
    assert any(c.get("field") == "spec.policy" and "set exactly one of critiqueRunRef or model"
               in c.get("message", "") for c in causes), causes
    # the same object with one policy is accepted: the rejection was the rule, not something else
    good = copy.deepcopy(bad)
    del good["spec"]["policy"]["model"]
    code, body = _create_raw(kube_cluster, crd, kube_namespace, good)
    assert code == 201, body


def test_cel_transition_rule_keeps_spec_immutable(crds, kube_cluster, kube_namespace):
    crd = crds["CritiqueRun"]
    cr = {"apiVersion": f"{GROUP}/{_served(crd)['name']}", "kind": "CritiqueRun",
          "metadata": {"name": "immutable"}, "spec": {"constitutionRef": {"name": "harmless"}}}
    code, body = _create_raw(kube_cluster, crd, kube_namespace, cr)
    assert code == 201, body
    code, status = kube_cluster.request("PATCH", _path(crd, kube_namespace, "immutable"),
                                        {"spec": {"constitutionRef": {"name": "other"}}},
                                        content_type="application/merge-patch+json")
    assert code == 422, status
    assert any(c.get("field", "").startswith("spec") for c in status["details"]["causes"]), status
