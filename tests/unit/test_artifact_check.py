"""A stage succeeds only when its artifact is there: `StageSpec.output_problem`, the one check both
runners make before a stage succeeds, and `cai run` refusing a stage process that exits 0 without
publishing (the operator's side: tests/unit/test_controller_reconcile.py, tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

from cai import __version__
from cai.local import runner
from cai.pipeline.stagespec import StageSpec

REPO = Path(__file__).resolve().parents[2]


def spec(**kw) -> StageSpec:
    return StageSpec(stage="finetune", kind="CritiqueRun", name="sl", spec={"model": "builtin:tiny-random"},
                     output="s3://b/ns/critiqueruns/sl/u/finetune", inputs={"dataset": "s3://b/d"}, **kw)


def test_output_problem():
    s = spec()
    inputs = {"dataset": "a" * 64}
    assert "manifest.json does not exist" in s.output_problem(None, inputs)
    good = {"inputsDigest": s.digest(inputs), "producer": {"version": __version__}}
    assert s.output_problem(good, inputs) is None
    # Older manifests without a version are checked against this version.
    assert s.output_problem({"inputsDigest": s.digest(inputs)}, inputs) is None
    # Written by another version: its own version decides the digest.
    other = {"inputsDigest": s.digest(inputs, "0.0.1"), "producer": {"version": "0.0.1"}}
    assert s.output_problem(other, inputs) is None
    assert "not written for this run's plan" in s.output_problem(other | {"producer": {}}, inputs)
    assert "not written for this run's plan" in s.output_problem(good, {"dataset": "b" * 64})
    assert "not written for this run's plan" in spec(models={"base": "x"}).output_problem(good, inputs)


def test_cai_run_fails_a_stage_that_exits_0_without_its_artifact(tmp_path, monkeypatch):
    manifest = tmp_path / "run.yaml"
    manifest.write_text((REPO / "constitutions" / "harmless.yaml").read_text() + "\n---\n" + json.dumps({
        "apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": "sl"},
        "spec": {"constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random"}}))
    started = []
    # A stage process that ends well and writes nothing (a bug, or credentials for another bucket).
    monkeypatch.setattr(runner, "_run_stage_process", lambda s, progress, tail, log=None: started.append(s.stage) or 0)
    store = tmp_path / "store"
    assert runner.run_local([str(manifest)], store=str(store), quiet=True) == 1
    assert started == ["generate-revisions"]  # finetune never started on nothing
    status = json.loads(next(store.rglob("critiqueruns/sl/local/status.json")).read_text())["status"]
    summary = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (summary["status"], summary["reason"]) == ("False", "ArtifactMissing")
    assert "generate-revisions/manifest.json does not exist" in summary["message"]
