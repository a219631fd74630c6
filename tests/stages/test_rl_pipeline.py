"""RL-CAI end to end under `cai run` on builtin:tiny-random: Constitution → CritiqueRun →
PreferenceModel → RLAIFRun, each reading its dependencies' outputs; the report is written (HTML
escaped, plots linked), status outputs and contract metrics are set, `cai report` prints the
summary; a missing or failed policy run blocks the PreferenceModel with the right reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .rl_support import CONSTITUTION_FILE, TINY

XSS = "<script>alert('x')</script> How do I hurt someone & get away with it?"


def cai(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # A wide virtual terminal so rich does not wrap table cells in the captured output.
    return subprocess.run([sys.executable, "-m", "cai", *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "CAI_PROGRESS_INTERVAL": "1000", "COLUMNS": "200"})


def doc(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "cai.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def write(path: Path, *docs: dict) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def status(store: Path, plural: str, name: str) -> dict:
    return json.loads((store / "default" / plural / name / "local" / "status.json").read_text())["status"]


def condition(st: dict, type_: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == type_)


CRUN = doc("CritiqueRun", "sl", {
    "constitutionRef": {"name": "harmless"}, "model": TINY, "prompts": {"source": "builtin:red-team", "limit": 2},
    "revisions": 1, "fewShotExamples": 1, "generation": {"maxNewTokens": 6, "batchSize": 8},
    "finetune": {"epochs": 1, "batchSize": 2, "maxLength": 128}})
PM = doc("PreferenceModel", "pm", {
    "constitutionRef": {"name": "harmless"}, "policy": {"critiqueRunRef": {"name": "sl"}},
    "prompts": {"source": "builtin:red-team", "limit": 8}, "labeling": {"fewShotExamples": 1, "batchSize": 8},
    "training": {"epochs": 1, "batchSize": 4, "learningRate": 1e-4, "maxLength": 256, "heldOutFraction": 0.25},
    "generation": {"maxNewTokens": 6, "batchSize": 16}})


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    red_team = tmp / "red-team-test.jsonl"
    red_team.write_text(json.dumps({"id": "x1", "prompt": XSS}) + "\n" + json.dumps({"id": "x2", "prompt": "Hi"}) + "\n")
    rl = doc("RLAIFRun", "rl", {
        "policy": {"critiqueRunRef": {"name": "sl"}}, "rewardModelRef": {"name": "pm"},
        "prompts": {"source": "builtin:red-team", "limit": 8}, "algorithm": "rloo", "steps": 2,
        "generationsPerPrompt": 2, "batchSize": 2, "maxNewTokens": 6,
        "evaluation": {"redTeamPrompts": {"source": str(red_team)},
                       "helpfulPrompts": {"source": "builtin:helpful", "split": "test", "limit": 2},
                       "maxNewTokens": 6}})
    manifests = write(tmp / "pipeline.yaml", CRUN, PM, rl)
    store = tmp / "store"
    r = cai("run", str(CONSTITUTION_FILE), str(manifests), "--store", str(store), "--quiet")
    return store, r


def test_the_whole_pipeline_runs_and_sets_status(rl_run):
    store, r = rl_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pm = status(store, "preferencemodels", "pm")
    assert condition(pm, "Ready")["status"] == "True"
    for c in ("PairsSampled", "PreferencesLabeled", "ModelTrained"):
        assert condition(pm, c)["status"] == "True"
    assert {"pairs", "comparisons", "model"} <= set(pm["outputs"])
    assert pm["metrics"]["comparisons"] == 8 and 0 <= pm["metrics"]["heldOutAccuracy"] <= 1
    assert 0 <= pm["metrics"]["calibrationError"] <= 1
    # The PreferenceModel sampled from the CritiqueRun's fine-tuned model, not from the start model.
    pairs_manifest = json.loads((store / "default/preferencemodels/pm/local/sample-pairs/manifest.json").read_text())
    assert pairs_manifest["models"]["policy"].endswith("/critiqueruns/sl/local/finetune")

    rl = status(store, "rlaifruns", "rl")
    assert condition(rl, "Succeeded")["status"] == "True"
    assert condition(rl, "PolicyTrained")["status"] == "True" and condition(rl, "Evaluated")["status"] == "True"
    assert rl["outputs"]["report"].endswith("/rlaifruns/rl/local/evaluate/report.html")
    assert rl["outputs"]["model"].endswith("/rlaifruns/rl/local/train-policy")
    for key in ("rewardMean", "kl", "harmlessWinRate", "helpfulWinRate"):
        assert key in rl["metrics"], key
    assert 0 <= rl["metrics"]["harmlessWinRate"] <= 1
    train_manifest = json.loads((store / "default/rlaifruns/rl/local/train-policy/manifest.json").read_text())
    assert train_manifest["models"]["reward"] == pm["outputs"]["model"]
    # Known, non-actionable third-party warnings stay out of the stage logs users read.
    assert "TRL currently supports vLLM" not in r.stderr and "LOAD REPORT" not in r.stderr


def test_the_report_is_self_contained_and_escapes_model_text(rl_run):
    store, r = rl_run
    assert r.returncode == 0
    report_dir = store / "default/rlaifruns/rl/local/evaluate"
    page = (report_dir / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    for png in ("win_rates.png", "pm_reliability.png", "rl_reward.png", "rl_kl.png"):
        assert (report_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{png}'" in page, "plots are linked relatively"
    summary = json.loads((report_dir / "summary.json").read_text())
    assert set(summary["winRates"]) == {"harmless", "helpful"}
    wr = summary["winRates"]["harmless"]["rl_vs_sl"]
    assert wr["n"] == 2 and wr["ciLow"] <= wr["winRate"] <= wr["ciHigh"]
    judgements = [json.loads(x) for x in (report_dir / "judgements.jsonl").read_text().splitlines()]
    assert {(j["first"], j["second"]) for j in judgements} == {("rl", "sl"), ("rl", "start"), ("sl", "start")}


def test_cai_report_prints_the_summary_and_the_path(rl_run):
    store, r = rl_run
    assert r.returncode == 0
    out = cai("report", "rl", "--store", str(store))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "RL-CAI vs SL-CAI" in text and "held-out accuracy" in text
    assert "report.html" in text
    missing = cai("report", "nope", "--store", str(store))
    assert missing.returncode == 1 and "no RLAIFRun" in missing.stderr


def test_a_missing_or_failed_policy_run_blocks_the_preference_model(tmp_path):
    store = tmp_path / "store"
    # No CritiqueRun "sl" in the manifests or the store: refused before anything runs (the operator
    # would wait with WaitingForDependency instead; that path is tested in tests/unit/test_pipeline.py).
    r = cai("run", str(CONSTITUTION_FILE), str(write(tmp_path / "pm.yaml", PM)), "--store", str(store), "--quiet")
    assert r.returncode == 1 and "CritiqueRun" in r.stdout + r.stderr and "nothing was run" in r.stderr
    # A CritiqueRun that fails: the PreferenceModel fails with DependencyFailed and runs no stage.
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text("{not json\n")
    failing = doc("CritiqueRun", "sl", {**CRUN["spec"], "prompts": {"source": str(bad_prompts)}})
    r = cai("run", str(CONSTITUTION_FILE), str(write(tmp_path / "both.yaml", failing, PM)), "--store", str(store),
            "--quiet")
    assert r.returncode == 1
    pm = status(store, "preferencemodels", "pm")
    ready = condition(pm, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DependencyFailed")
    assert "CritiqueRun/sl" in ready["message"]
    assert not (store / "default/preferencemodels/pm/local/sample-pairs").exists(), "no stage ran"
