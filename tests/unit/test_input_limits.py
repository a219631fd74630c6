"""Input that should be refused is refused with file, line and field (issue 12): YAML alias bombs,
unknown API groups, misspelled apiVersion/kind keys, files without objects, objects larger than the
apiserver or the operator's plan takes, and bad JSONL prompt rows at their real line."""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from cai.api.manifest import load_documents
from cai.cli import main
from cai.data.prompts import PromptSourceError, load_prompts

ROOT = Path(__file__).parents[2]


def test_bad_jsonl_rows_are_reported_at_their_line_after_blank_lines(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "one"}\n\n\n{"prompt": "two"}\n{"text_body": "x"}\n')
    with pytest.raises(PromptSourceError, match=r"line 5 has no prompt column"):
        load_prompts(str(src))
    src.write_text('{"prompt": "one"}\n\n{"prompt": "two",}\n')
    with pytest.raises(PromptSourceError, match=r"line 3: expected valid JSON \(.* at column 18\)"):
        load_prompts(str(src))
    src.write_text('{"prompt": "a", "split": "test"}\n\n{"prompt": "b"}\n7\n')
    with pytest.raises(PromptSourceError, match=r"line 4 is not an object"):
        load_prompts(str(src), split="train")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _validate(*paths: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", *map(str, paths)])
    return rc, out.getvalue(), err.getvalue()


RUN = """\
    apiVersion: cai.dev/v1alpha1
    kind: CritiqueRun
    metadata: {name: sl}
    spec:
      constitutionRef: {name: harmless}
      model: builtin:tiny-random
"""


def test_yaml_alias_bomb_is_refused_before_any_object_is_built(tmp_path):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = _write(tmp_path, "bomb.yaml", RUN + "      resources:\n        podTemplate:\n"
                  + "".join(f"          {line}\n" for line in levels))
    assert bomb.stat().st_size < 2000  # ~1 KB that expands to 9^10 strings
    docs, problems = load_documents([bomb])
    assert docs == []
    [problem] = problems
    assert re.match(rf"{re.escape(str(bomb))}:\d+:\d+$", problem.file)
    assert "expands to more than 200000 nodes (YAML aliases/anchors" in problem.message


def test_recursive_alias_is_refused_and_small_aliases_are_fine(tmp_path):
    loop = _write(tmp_path, "loop.yaml", RUN + "      resources:\n        podTemplate: &t {spec: *t}\n")
    [problem] = load_documents([loop])[1]
    assert "found a recursive alias" in problem.message and problem.file.startswith(f"{loop}:")
    ok = _write(tmp_path, "ok.yaml", RUN + "      resources:\n        podTemplate:\n"
                "          metadata: {labels: &l {team: a}, annotations: *l}\n")
    docs, problems = load_documents([ok])
    assert problems == [] and docs[0][1]["spec"]["resources"]["podTemplate"]["metadata"]["annotations"] == {"team": "a"}


def test_validate_fails_on_unknown_groups_misspelled_keys_and_files_without_objects(tmp_path):
    group = _write(tmp_path, "group.yaml", RUN.replace("cai.dev/", "cai.example.com/"))
    near = _write(tmp_path, "near.yaml", "apiVersion: cia.dev/v1alpha1\nkind: Thing\nmetadata: {name: x}\n")
    key = _write(tmp_path, "key.yaml", RUN.replace("apiVersion:", "apiversion:"))
    kind = _write(tmp_path, "kind.yaml", RUN.replace("kind:", "Kind:"))
    empty = _write(tmp_path, "empty.yaml", "# nothing here\n---\n")
    noapi = _write(tmp_path, "noapi.yaml", "kind: CritiqueRun\nmetadata: {name: x}\n")
    deep = _write(tmp_path, "deep.yaml", RUN + "      resources: {podTemplate: " + "[" * 5000 + "]" * 5000 + "}\n")
    constitution = ROOT / "constitutions" / "harmless.yaml"
    rc, out, _ = _validate(group, near, key, kind, empty, noapi, deep, constitution)
    assert rc == 1
    lines = out.splitlines()
    assert (f"{group}: CritiqueRun/sl: apiVersion: expected cai.dev/v1alpha1 (API group cai.dev) for kind "
            "CritiqueRun, got 'cai.example.com/v1alpha1'") in lines
    assert any(line.startswith(f"{near}: Thing/x: apiVersion: expected cai.dev/v1alpha1") for line in lines)
    assert f"{key}: CritiqueRun/sl: apiversion: unknown key; did you mean 'apiVersion'?" in lines
    assert f"{kind}: ?/sl: Kind: unknown key; did you mean 'kind'?" in lines
    assert f"{empty}: -: -: no objects in this file (expected Kubernetes objects)" in lines
    assert (f"{noapi}: CritiqueRun/x: apiVersion: expected cai.dev/v1alpha1 (API group cai.dev) for kind "
            "CritiqueRun, got None") in lines
    assert f"{deep}: -: -: expected valid YAML: nested too deeply" in lines
    # Other tools' objects are still skipped, but validating nothing at all is not a success.
    ns = _write(tmp_path, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ml}\n")
    rc, out, err = _validate(ns)
    assert (rc, out) == (1, "") and f"error: no cai.dev objects in {ns}" in err
    assert _validate(ns, constitution)[0] == 0


def _constitution(principles: int, text: int) -> dict:
    return {"apiVersion": "cai.dev/v1alpha1", "kind": "Constitution", "metadata": {"name": "big"},
            "spec": {"critiqueRevisionPrinciples": [{"name": f"p{i}", "critique": "c" * text, "revision": "r" * text}
                                                    for i in range(principles)],
                     "preferencePrinciples": [{"name": "p", "question": "q"}]}}


def test_objects_larger_than_the_apiserver_or_the_plan_takes_are_refused(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump(_constitution(512, 2000)))  # ~2 MB, within every field's own limits
    rc, out, _ = _validate(huge)
    assert rc == 1
    assert re.search(rf"^{re.escape(str(huge))}: Constitution/big: -: object takes \d+ bytes as JSON; the apiserver "
                     r"stores at most 1572864 \(1\.5 MiB\)$", out, re.MULTILINE), out
    big = tmp_path / "big.yaml"  # ~1 MB: the apiserver takes it, the operator's plan (900000 bytes) does not
    big.write_text(yaml.safe_dump(_constitution(250, 2000)))
    rc, out, _ = _validate(big)
    assert rc == 1 and f"{big}: Constitution/big: spec: takes " in out and "at most 900000 bytes" in out
    mid = tmp_path / "mid.yaml"  # ~520 KB: fits once, but not in each of a CritiqueRun's stage specs
    mid.write_text(yaml.safe_dump(_constitution(130, 2000)) + "---\n" + textwrap.dedent(RUN).replace(
        "harmless", "big"))
    rc, out, _ = _validate(mid)
    assert rc == 1 and "CritiqueRun/sl: spec.constitutionRef.name: the operator's plan would take about" in out


def test_model_fields_refuse_empty_strings_in_the_crds_too():
    crd = yaml.safe_load((ROOT / "crds" / "cai.dev_critiqueruns.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["model"]["minLength"] == 1
    pm = yaml.safe_load((ROOT / "crds" / "cai.dev_preferencemodels.yaml").read_text())
    pm_spec = pm["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert pm_spec["feedbackModel"]["minLength"] == 1
