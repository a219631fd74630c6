"""The typed API is the single source of truth: CRDs generated from it are current, structural, and
carry the rules; manifests parse with defaults and reject what the apiserver would reject."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai.api import KINDS
from cai.api.crdgen import crd_for, render_all, stale
from cai.api.kinds import CritiqueRunSpec, PreferenceModelSpec
from cai.api.manifest import parse_resource

ROOT = Path(__file__).parents[2]


def cai(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai", *args], cwd=cwd, capture_output=True, check=False, text=True)


def test_crds_in_repo_are_current():
    r = cai("crds", "--check")
    assert r.returncode == 0, r.stderr


def test_crds_check_fails_when_stale(tmp_path):
    out = tmp_path / "crds"
    shutil.copytree(ROOT / "crds", out)
    victim = next(out.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("maxNewTokens", "maxTokens"))
    r = cai("crds", "--check", "--out", str(out))
    assert r.returncode == 1
    assert victim.name in r.stderr
    (out / "cai.dev_extra.yaml").write_text("# left over\n")
    assert "cai.dev_extra.yaml" in stale(out)


def _walk(schema, path="$"):
    yield path, schema
    for k, v in (schema.get("properties") or {}).items():
        yield from _walk(v, f"{path}.{k}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_schema_is_structural_and_documented(kind):
    crd = crd_for(KINDS[kind])
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
    for name, prop in schema["properties"]["spec"]["properties"].items():
        assert prop.get("description"), f"spec.{name} has no description (kubectl explain)"
    assert version["subresources"] == {"status": {}}
    names = crd["spec"]["names"]
    assert names["categories"] == ["cai"]
    assert names["shortNames"] == [KINDS[kind].short_name]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns[KINDS[kind].summary_condition] == f'.status.conditions[?(@.type=="{KINDS[kind].summary_condition}")].reason'
    assert "Age" in columns
    assert "phase" not in schema["properties"]["status"]["properties"]


def test_crd_cel_rules():
    pm = crd_for(KINDS["PreferenceModel"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    clamp_rules = pm["properties"]["labeling"]["x-kubernetes-validations"]
    assert any("self.clamp[0] >= 0.0" in r["rule"] and r["fieldPath"] == ".clamp" for r in clamp_rules)
    assert pm["properties"]["policy"]["x-kubernetes-validations"][0]["rule"] == "has(self.critiqueRunRef) != has(self.model)"
    immutability = pm["x-kubernetes-validations"][-1]
    assert "oldSelf.constitutionRef" in immutability["rule"] and "suspend" not in immutability["rule"]
    const = crd_for(KINDS["Constitution"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert not const.get("x-kubernetes-validations"), "constitutions stay editable"
    assert const["properties"]["preferencePrinciples"]["x-kubernetes-list-map-keys"] == ["name"]


def test_crd_defaults_match_api_defaults():
    spec = crd_for(KINDS["CritiqueRun"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = CritiqueRunSpec.model_validate({"constitutionRef": {"name": "c"}})
    assert spec["properties"]["revisions"]["default"] == defaults.revisions == 4
    assert spec["properties"]["model"]["default"] == "builtin:smollm2-135m-instruct"
    assert spec["properties"]["generation"]["default"] == defaults.generation.to_wire()
    assert yaml.safe_load(render_all()["cai.dev_critiqueruns.yaml"]) == crd_for(KINDS["CritiqueRun"])


def test_spec_defaults_follow_the_paper():
    pm = PreferenceModelSpec.model_validate({"constitutionRef": {"name": "c"}, "policy": {"model": "builtin:tiny-random"}})
    assert pm.labeling.clamp == [0.4, 0.6]
    assert pm.labeling.soft_labels and pm.labeling.both_orders and not pm.labeling.chain_of_thought
    assert pm.pairs_per_prompt == 1
    crun = CritiqueRunSpec.model_validate({"constitutionRef": {"name": "c"}, "helpfulPrompts": {"source": "builtin:helpful"}})
    assert crun.revisions == 4 and crun.helpful_prompts.samples_per_prompt == 2 and crun.finetune.epochs == 1


def _doc(kind, spec, name="x"):
    return {"apiVersion": "cai.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def test_manifest_uses_wire_names_only():
    res, problems = parse_resource(_doc("CritiqueRun", {"constitutionRef": {"name": "c"}, "max_new_tokens": 5}), "f.yaml")
    assert res is None
    assert [str(p) for p in problems] == [
        ("f.yaml: CritiqueRun/x: spec.max_new_tokens: unknown field (expected one of: constitutionRef, fewShotExamples, "
         "finetune, generation, helpfulPrompts, model, prompts, resources, revisions, seed, storage, suspend)")
    ]


def test_wire_round_trip():
    doc = _doc("PreferenceModel", {"constitutionRef": {"name": "c"}, "policy": {"critiqueRunRef": {"name": "sl"}},
                                   "labeling": {"chainOfThought": True, "clamp": [0.3, 0.7]}})
    res, problems = parse_resource(doc)
    assert not problems
    again, problems = parse_resource({**doc, "spec": res.spec.to_wire()})
    assert not problems and again.spec == res.spec
