"""`cai validate`: exit 0 on the shipped manifests, one `<file>: <Kind>/<name>: <field>: <expected>`
line per problem otherwise, covering schema, rules, references, model refs and prompt sources."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).parents[2]


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai", "validate", *args], cwd=ROOT, capture_output=True, check=False, text=True)


def test_shipped_manifests_are_valid():
    r = validate("constitutions/", "examples/")
    assert r.returncode == 0, r.stdout + r.stderr


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stdout.splitlines() if line.strip()]


def test_each_kind_of_problem_is_named(tmp_path):
    f = write(tmp_path, "runs.yaml", """\
        apiVersion: cai.dev/v1alpha1
        kind: PreferenceModel
        metadata: {name: pm}
        spec:
          constitutionRef: {name: missing-constitution}
          policy: {model: builtin:tiny-random, critiqueRunRef: {name: sl}}
          labeling: {clamp: [0.6, 0.9]}
        ---
        apiVersion: cai.dev/v1alpha1
        kind: CritiqueRun
        metadata: {name: sl}
        spec:
          constitutionRef: {name: harmless}
          revisions: 40
          colour: blue
        ---
        apiVersion: cai.dev/v1alpha1
        kind: CritiqueRun
        metadata: {name: sl2}
        spec:
          constitutionRef: {name: harmless}
          model: builtin:gpt-17
          seed: lots
        """)
    r = validate(str(f), "constitutions/harmless.yaml")
    assert r.returncode == 1
    out = lines(r)
    expected = {
        f"{f}: PreferenceModel/pm: spec.policy: set exactly one of critiqueRunRef or model",
        f"{f}: PreferenceModel/pm: spec.labeling.clamp: clamp must satisfy 0 <= lo <= 0.5 <= hi <= 1",
        (f"{f}: PreferenceModel/pm: spec.constitutionRef.name: expected an existing Constitution named "
         "'missing-constitution' (not among the given manifests)"),
        f"{f}: CritiqueRun/sl: spec.revisions: expected a value <= 16, got 40",
        f"{f}: CritiqueRun/sl2: spec.seed: expected an integer, got 'lots'",
    }
    assert expected <= set(out), out
    assert any(line.startswith(f"{f}: CritiqueRun/sl: spec.colour: unknown field") for line in out)
    # sl2's field error does not hide its unknown model: one pass reports both
    assert any(line.startswith(f"{f}: CritiqueRun/sl2: spec.model: invalid model reference 'builtin:gpt-17'")
               for line in out), out
    # A valid object referencing an invalid one is not reported as a missing reference.
    assert not any("critiqueRunRef.name" in line for line in out)


def test_field_errors_do_not_hide_reference_model_and_source_problems(tmp_path):
    """Every problem of a file in one pass: an object whose fields are invalid still has its references,
    model and prompt sources checked (with the invalid fields left out), nested and list fields included."""
    f = write(tmp_path, "run.yaml", """\
        apiVersion: cai.dev/v1alpha1
        kind: CritiqueRun
        metadata: {name: broken}
        spec:
          constitutionRef: {name: nothere}
          model: builtin:gpt-17
          seed: lots
          prompts: {source: builtin:nope, limit: -1}
          finetune: {epochs: many}
        ---
        apiVersion: cai.dev/v1alpha1
        kind: Constitution
        metadata: {name: odd}
        spec:
          critiqueRevisionPrinciples:
            - {name: ok, critique: c, revision: r}
            - {name: 7, critique: c}
        """)
    r = validate(str(f))
    assert r.returncode == 1
    out = lines(r)
    paths = {line.split(": ")[2] for line in out if line.startswith(f"{f}: CritiqueRun/broken:")}
    assert {"spec.seed", "spec.prompts.limit", "spec.finetune.epochs",  # field errors
            "spec.constitutionRef.name", "spec.model", "spec.prompts.source"} <= paths, out
    assert any("spec.prompts.source: unknown builtin prompt set" in line for line in out), out
    assert any(line.startswith(f"{f}: Constitution/odd: spec.critiqueRevisionPrinciples[1]") for line in out), out


def test_model_and_prompt_sources_checked(tmp_path):
    f = write(tmp_path, "run.yaml", """\
        apiVersion: cai.dev/v1alpha1
        kind: CritiqueRun
        metadata: {name: sl}
        spec:
          constitutionRef: {name: harmless}
          model: builtin:gpt-17
          prompts: {source: /does/not/exist.jsonl}
          helpfulPrompts: {source: builtin:nope}
        """)
    r = validate("--local", str(f), "constitutions/harmless.yaml")
    out = lines(r)
    assert r.returncode == 1
    assert any(line.startswith(f"{f}: CritiqueRun/sl: spec.model: ") and "builtin:smollm2-135m-instruct" in line for line in out), out
    assert f"{f}: CritiqueRun/sl: spec.prompts.source: file not found: /does/not/exist.jsonl" in out
    assert any(line.startswith(f"{f}: CritiqueRun/sl: spec.helpfulPrompts.source: unknown builtin prompt set") for line in out)
    # Without --local, files that live elsewhere (inside pods) are not required to exist here.
    r = validate(str(f), "constitutions/harmless.yaml")
    assert not any("spec.prompts.source" in line for line in lines(r))


def test_metadata_yaml_and_duplicates(tmp_path):
    bad_yaml = write(tmp_path, "broken.yaml", "kind: [unclosed\n")
    dup = write(tmp_path, "dup.yaml", """\
        apiVersion: cai.dev/v1alpha1
        kind: Constitution
        metadata: {name: Harmless!}
        spec:
          critiqueRevisionPrinciples: [{name: a, critique: c, revision: r}, {name: a, critique: c2, revision: r2}]
          preferencePrinciples: []
        """)
    r = validate(str(bad_yaml), str(dup))
    out = lines(r)
    assert r.returncode == 1
    # The file position keeps the line and column (1-based) where the parser gave up.
    assert any(line.startswith(f"{bad_yaml}:2:1: -: -: expected valid YAML: while parsing a flow sequence")
               for line in out), out
    assert any(line.startswith(f"{dup}: Constitution/Harmless!: metadata.name: expected a DNS-1123 label") for line in out)
    assert f"{dup}: Constitution/Harmless!: spec.preferencePrinciples: expected at least 1 item(s)" in out


def test_duplicate_principle_names_and_objects(tmp_path):
    f = write(tmp_path, "c.yaml", """\
        apiVersion: cai.dev/v1alpha1
        kind: Constitution
        metadata: {name: c}
        spec:
          critiqueRevisionPrinciples: [{name: a, critique: c, revision: r}, {name: a, critique: c2, revision: r2}]
          preferencePrinciples: [{name: p, question: q}]
        """)
    r = validate(str(f), str(f))
    out = lines(r)
    assert f"{f}: Constitution/c: spec.critiqueRevisionPrinciples[1].name: expected unique name; 'a' repeats" in out
    assert any("metadata.name: expected a unique name" in line for line in out)


def test_missing_file_and_non_cai_documents(tmp_path):
    other = write(tmp_path, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ml}\n")
    r = validate(str(other), str(tmp_path / "nope.yaml"))
    assert r.returncode == 1
    assert f"{tmp_path / 'nope.yaml'}: -: -: file not found" in lines(r)
