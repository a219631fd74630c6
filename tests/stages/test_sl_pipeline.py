"""SL-CAI end to end under `cai run` on builtin:tiny-random: the dataset carries every round with
its principle, the fine-tuned model is a complete HF dir with a manifest, reruns resume, Ctrl-C loses
nothing finished, and bad input fails before any model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cai.store import file_digest, read_manifest

ROOT = Path(__file__).parents[2]
CONSTITUTION = ROOT / "constitutions" / "harmless.yaml"


def crun_manifest(name: str = "tiny-sl", **spec_overrides) -> dict:
    spec = {
        "constitutionRef": {"name": "harmless"},
        "model": "builtin:tiny-random",
        "prompts": {"source": "builtin:red-team", "limit": 4},
        "helpfulPrompts": {"source": "builtin:helpful", "limit": 2, "samplesPerPrompt": 2},
        "fewShotExamples": 1,
        "seed": 3,
        "generation": {"maxNewTokens": 12, "batchSize": 8},
        "finetune": {"epochs": 1, "batchSize": 4, "maxLength": 256, "learningRate": 1e-3},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": name}, "spec": spec}


def write_manifest(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def cai(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai", *args], capture_output=True, check=False, text=True, timeout=timeout,
                          env={**os.environ, "CAI_PROGRESS_INTERVAL": "1000"})


def status_of(store: Path, name: str) -> dict:
    return json.loads((store / "default" / "critiqueruns" / name / "local" / "status.json").read_text())


@pytest.fixture(scope="module")
def sl_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sl")
    store = tmp / "store"
    manifest = write_manifest(tmp / "crun.yaml", crun_manifest())
    started = time.monotonic()
    r = cai("run", str(CONSTITUTION), str(manifest), "--store", str(store), "--quiet")
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stdout + r.stderr
    return {"store": store, "manifest": manifest, "elapsed": elapsed, "out": r.stdout + r.stderr}


def test_dataset_rows_carry_every_round_with_its_principle(sl_run):
    status = status_of(sl_run["store"], "tiny-sl")
    dataset = Path(status["status"]["outputs"]["dataset"].removeprefix("file://"))
    chains = [json.loads(line) for line in (dataset / "revisions.jsonl").read_text().splitlines()]
    principles = {p["name"]: p for p in yaml.safe_load(CONSTITUTION.read_text())["spec"]["critiqueRevisionPrinciples"]}
    assert len(chains) == 4
    used = set()
    for chain in chains:
        assert chain["prompt"] and isinstance(chain["initialResponse"], str)
        assert [r["round"] for r in chain["rounds"]] == [1, 2, 3, 4], "4 rounds by default (paper)"
        for rnd in chain["rounds"]:
            assert rnd["principle"] in principles
            assert rnd["critiqueRequest"] == principles[rnd["principle"]]["critique"]
            assert rnd["revisionRequest"] == principles[rnd["principle"]]["revision"]
            assert isinstance(rnd["critique"], str) and isinstance(rnd["revision"], str)
            used.add(rnd["principle"])
    assert len(used) > 1, "principles are drawn per round, not fixed"
    sft = [json.loads(line) for line in (dataset / "sft.jsonl").read_text().splitlines()]
    revisions = [r for r in sft if r["source"] == "revision"]
    helpful = [r for r in sft if r["source"] == "helpful"]
    nonempty = sum(1 for c in chains for r in c["rounds"] if r["revision"])
    assert len(revisions) == nonempty and len(helpful) <= 4
    assert all(r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant" for r in sft)
    metrics = read_manifest(status["status"]["outputs"]["dataset"])["metrics"]
    assert metrics["prompts"] == 4 and metrics["sftRows"] == len(sft) and metrics["tokensGenerated"] > 0
    assert metrics["tokensPerSecond"] > 0


def test_finetuned_model_is_a_complete_hf_dir_with_manifest(sl_run):
    status = status_of(sl_run["store"], "tiny-sl")["status"]
    model_uri = status["outputs"]["model"]
    model_dir = Path(model_uri.removeprefix("file://"))
    manifest = read_manifest(model_uri)
    assert manifest["kind"] == "model" and manifest["producer"]["stage"] == "finetune"
    files = {f["path"]: f for f in manifest["files"]}
    for required in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert required in files, f"{required} missing from {sorted(files)}"
        assert file_digest(model_dir / required) == files[required]["sha256"]
    assert manifest["inputs"][0]["uri"] == status["outputs"]["dataset"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Succeeded"]["status"] == "True"
    assert conditions["CritiquesGenerated"]["status"] == "True" and conditions["ModelFineTuned"]["status"] == "True"
    assert status["metrics"]["trainSteps"] >= 1


def test_finetune_changed_the_weights(sl_run, tiny_model_dir):
    from safetensors.torch import load_file

    status = status_of(sl_run["store"], "tiny-sl")["status"]
    tuned = load_file(Path(status["outputs"]["model"].removeprefix("file://")) / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    changed = [k for k in base if k in tuned and not (base[k] == tuned[k]).all()]
    assert len(changed) > len(base) // 2, f"only {len(changed)}/{len(base)} tensors changed"


def test_rerun_is_a_no_op_and_status_table_lists_the_run(sl_run):
    store = sl_run["store"]
    before = {s: read_manifest(status_of(store, "tiny-sl")["status"]["outputs"][k])["createdAt"]
              for s, k in (("gen", "dataset"), ("ft", "model"))}
    r = cai("run", str(CONSTITUTION), str(sl_run["manifest"]), "--store", str(store), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("up to date") == 2
    after = {s: read_manifest(status_of(store, "tiny-sl")["status"]["outputs"][k])["createdAt"]
             for s, k in (("gen", "dataset"), ("ft", "model"))}
    assert before == after
    table = cai("status", "--store", str(store))
    assert table.returncode == 0
    assert "tiny-sl" in table.stdout and "Succeeded=True" in table.stdout


def test_same_seed_draws_the_same_principles(sl_run, tmp_path):
    """Generation-only run in another store: principle draws depend on the seed and prompt ids only."""
    manifest = write_manifest(tmp_path / "again.yaml", crun_manifest(finetune={"enabled": False}))
    r = cai("run", str(CONSTITUTION), str(manifest), "--store", str(tmp_path / "s2"), "--quiet")
    assert r.returncode == 0, r.stderr
    def draws(store):
        ds = Path(status_of(store, "tiny-sl")["status"]["outputs"]["dataset"].removeprefix("file://"))
        return [[r["principle"] for r in json.loads(line)["rounds"]] for line in (ds / "revisions.jsonl").read_text().splitlines()]
    assert draws(sl_run["store"]) == draws(tmp_path / "s2")


def test_interrupt_keeps_finished_stages_and_rerun_resumes(tmp_path):
    store = tmp_path / "store"
    manifest = write_manifest(tmp_path / "crun.yaml", crun_manifest(name="interrupted"))
    # A Python-level handler here becomes SIG_DFL in the child: Ctrl-C works there even when this test
    # runs where SIGINT is ignored (a background job), which the child would otherwise inherit.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cai", "run", str(CONSTITUTION), str(manifest), "--store",
                                 str(store), "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    seen: list[str] = []
    in_finetune = False
    for line in proc.stdout:
        seen.append(line)
        if in_finetune:
            # The finetune process has printed: it runs, and the runner waits on it. Ctrl-C now.
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            break
        in_finetune = "→ finetune" in line
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, "".join(seen) + rest
    dataset_uri = (store / "default/critiqueruns/interrupted/local/generate-revisions").as_uri()
    finished = read_manifest(dataset_uri)
    assert finished is not None, "the finished stage survives the interrupt"
    assert read_manifest((store / "default/critiqueruns/interrupted/local/finetune").as_uri()) is None, "".join(seen) + rest
    status = status_of(store, "interrupted")["status"]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["ModelFineTuned"] == "Interrupted"

    r = cai("run", str(CONSTITUTION), str(manifest), "--store", str(store), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "[generate-revisions] up to date" in r.stderr
    assert read_manifest(dataset_uri)["createdAt"] == finished["createdAt"]
    assert read_manifest((store / "default/critiqueruns/interrupted/local/finetune").as_uri()) is not None


def test_bad_input_fails_fast_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = {
        "missing constitution": (crun_manifest(constitutionRef={"name": "nope"}), [],
                                 "spec.constitutionRef.name: expected an existing Constitution named 'nope'"),
        "unknown model": (crun_manifest(model="builtin:gpt-17"), [str(CONSTITUTION)], "spec.model: "),
        "empty prompts": (crun_manifest(prompts={"source": str(empty)}), [str(CONSTITUTION)],
                          f"spec.prompts.source: file is empty: {empty}"),
    }
    for label, (doc, extra, message) in cases.items():
        store = tmp_path / label.replace(" ", "-")
        manifest = write_manifest(tmp_path / f"{label.replace(' ', '-')}.yaml", doc)
        r = cai("run", *extra, str(manifest), "--store", str(store), "--quiet")
        assert r.returncode == 1, label
        assert f"{manifest}: CritiqueRun/tiny-sl: {message}" in r.stdout, (label, r.stdout)
        assert "nothing was run" in r.stderr
        assert not store.exists(), f"{label}: wrote into the store"
        # Models are loaded only by stage processes: none may have started.
        assert "→" not in r.stderr and "[generate-revisions]" not in r.stderr, f"{label}: a stage started"


def test_stage_entry_point_rejects_bad_specs(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text('{"stage": "finetune"}')
    r = cai("stage", "finetune", "--spec", str(bad))
    assert r.returncode == 1 and "not a valid stage spec" in r.stderr
    r = cai("stage", "finetune", "--spec", str(tmp_path / "absent.json"))
    assert r.returncode == 1 and "not found" in r.stderr
