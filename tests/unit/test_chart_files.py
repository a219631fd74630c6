"""The chart's generated files are current and agree with their sources (no helm needed):
CRD templates == crds/ (which `cai crds` writes from the API types), RBAC rules == cai.controller.rbac, values.schema.json == hack/schema.py,
docs/configuration.md == the schema and values.yaml, and every value in values.yaml is described by the
schema with the right type (helm would refuse the defaults otherwise; tests/integration/test_chart.py
runs helm itself)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "cai-operator"


def run_hack(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHART / "hack" / script), *args], capture_output=True, text=True,
                          cwd=REPO, check=False)


@pytest.mark.parametrize("script", ["sync-crds.py", "sync-rbac.py", "schema.py", "gen-docs.py"])
def test_generated_files_are_current(script):
    r = run_hack(script, "--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_crd_templates_carry_the_crds_and_keep_them_on_uninstall():
    """Each template, with its Helm lines removed, is the CRD of crds/ plus labels and the keep annotation."""
    srcs = sorted((REPO / "crds").glob("*.yaml"))
    assert srcs, "crds/ is empty (make crds)"
    for src in srcs:
        tpl = (CHART / "templates" / "crds" / src.name).read_text()
        lines = tpl.splitlines()
        assert lines[1] == "{{- if .Values.crds.enabled }}" and lines[-1] == "{{- end }}", src.name
        plain = "\n".join(line for line in lines if "{{" not in line)
        got, want = yaml.safe_load(plain), yaml.safe_load(src.read_text())
        assert got["spec"] == want["spec"], f"{src.name}: spec differs from crds/"
        assert got["metadata"]["name"] == want["metadata"]["name"]
        assert got["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_sync_detects_drift(tmp_path, monkeypatch):
    """--check really compares: a changed CRD in crds/ makes it fail and name the file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_crds", CHART / "hack" / "sync-crds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "crds"
    src.mkdir()
    for p in (REPO / "crds").glob("*.yaml"):
        (src / p.name).write_text(p.read_text())
    victim = min(src.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("served: true", "served: false", 1))
    monkeypatch.setattr(mod, "SRC", src)
    assert mod.main(["--check"]) == 1


def _check_against_schema(value, schema: dict, path: str, problems: list[str]) -> None:
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float), "integer": int}
    t = schema.get("type")
    allowed = tuple(types[x] for x in (t if isinstance(t, list) else [t])) if t else ()
    if allowed and not isinstance(value, allowed) or (t in ("integer", "number") and isinstance(value, bool)):
        problems.append(f"{path}: {value!r} is not {t}")
        return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                _check_against_schema(v, props[k], f"{path}.{k}", problems)
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}.{k}: not in the schema")


def test_values_yaml_is_described_by_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    problems: list[str] = []
    _check_against_schema(values, schema, "values", problems)
    assert not problems, "\n".join(problems)
    # ...and every top-level schema property has a default in values.yaml (documented in context)
    assert set(schema["properties"]) == set(values), set(schema["properties"]) ^ set(values)


def test_every_schema_value_is_documented():
    schema = json.loads((CHART / "values.schema.json").read_text())
    doc = (REPO / "docs" / "configuration.md").read_text()

    def leaves(node: dict, path: list[str]):
        props = node.get("properties")
        if node.get("type") == "object" and props and node.get("additionalProperties") is False:
            for k, child in props.items():
                yield from leaves(child, path + [k])
        else:
            assert node.get("description"), f"{'.'.join(path)} has no description in the schema"
            yield ".".join(path)

    keys = list(leaves(schema, []))
    assert len(keys) > 40
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    assert not missing, f"docs/configuration.md lacks {missing} (make chart-docs)"
