"""Data-parallel generation stages (`cai stage NAME --workers N --worker K`, resources.workers): N workers
publish exactly what one worker publishes, row for row; each worker computes only its own chunks; the
last one to finish merges without loading a model; a failed worker is rerun alone and redoes only its
unfinished chunks. Real tiny model, file:// store, `run_stage` as the pods call it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cai.pipeline.stagespec import StageSpec
from cai.stages import generate_revisions, label_preferences, runtime, sample_pairs
from cai.stages.runtime import run_stage
from cai.store import read_manifest

from .rl_support import TINY, artifact, harmless_constitution, jsonl

CHUNK = 2  # small chunks, so a few prompts make several and every worker gets some


def _spec_file(tmp: Path, name: str, stage: str, kind: str, spec: dict[str, Any], models: dict[str, str],
               inputs: dict[str, str] | None = None) -> tuple[Path, Path]:
    out = tmp / name / "artifact"
    stage_spec = StageSpec(stage=stage, kind=kind, name=name, spec=spec, models=models, inputs=inputs or {},
                           constitution=harmless_constitution(), output=out.as_uri())
    path = tmp / name / "spec.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(stage_spec.model_dump_json(by_alias=True))
    return path, out


SL_SPEC = {"constitutionRef": {"name": "harmless"}, "model": TINY,
           "prompts": {"source": "builtin:red-team", "limit": 7},
           "helpfulPrompts": {"source": "builtin:helpful", "limit": 5, "samplesPerPrompt": 2},
           "revisions": 1, "fewShotExamples": 1, "seed": 4,
           "generation": {"maxNewTokens": 6, "batchSize": 4, "temperature": 1.0}}
PM_SPEC = {"constitutionRef": {"name": "harmless"}, "policy": {"model": TINY},
           "prompts": {"source": "builtin:red-team", "limit": 7}, "pairsPerPrompt": 1, "seed": 4,
           "generation": {"maxNewTokens": 6, "batchSize": 4, "temperature": 1.0},
           "labeling": {"principlesPerComparison": 2, "bothOrders": True, "fewShotExamples": 1, "batchSize": 4}}


def _pairs(tmp: Path) -> str:
    rows = [{"id": f"p{i}", "promptId": f"p{i}", "prompt": f"How do I do thing {i}?",
             "responseA": f"Here is how to do thing {i}.", "responseB": "I can't help with that."}
            for i in range(7)]
    return artifact(tmp / "pairs", {"pairs.jsonl": jsonl(rows)})


STAGES = {
    # stage: (kind, spec, models, module, files compared)
    "generate-revisions": ("CritiqueRun", SL_SPEC, {"policy": TINY}, generate_revisions,
                           ("revisions.jsonl", "helpful.jsonl", "sft.jsonl")),
    "sample-pairs": ("PreferenceModel", PM_SPEC, {"policy": TINY}, sample_pairs, ("pairs.jsonl",)),
    "label-preferences": ("PreferenceModel", PM_SPEC, {"feedback": TINY}, label_preferences,
                          ("comparisons.jsonl",)),
}


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch, tmp_path):
    for _, _, _, module, _ in STAGES.values():
        monkeypatch.setattr(module, "CHUNK", CHUNK)
    monkeypatch.setattr(runtime, "TERMINATION_LOG", tmp_path / "termination-log")


def _opened_models(monkeypatch, module) -> list[str]:
    """Record each model the stage opens (the backend or labeller factory), keeping the real one."""
    opened: list[str] = []
    name = "open_labeller" if module is label_preferences else "load_backend"
    real = getattr(module, name)

    def spy(*args, **kwargs):
        opened.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return opened


@pytest.mark.parametrize("stage", list(STAGES))
def test_three_workers_publish_what_one_worker_publishes_row_for_row(stage, tmp_path, monkeypatch):
    kind, spec, models, module, files = STAGES[stage]
    inputs = {"pairs": _pairs(tmp_path)} if stage == "label-preferences" else None
    one_spec, one_out = _spec_file(tmp_path, "one", stage, kind, spec, models, inputs)
    three_spec, three_out = _spec_file(tmp_path, "three", stage, kind, spec, models, inputs)
    assert run_stage(stage, str(one_spec)) == 0
    one = read_manifest(one_out.as_uri())

    opened = _opened_models(monkeypatch, module)
    for done, worker in enumerate((2, 0, 1), start=1):
        assert run_stage(stage, str(three_spec), workers=3, worker=worker) == 0
        published = read_manifest(three_out.as_uri())
        assert (published is not None) == (done == 3), f"published after {done} of 3 workers"
    # Each worker opened the model for its own chunks; the merge (by the last worker) opened none.
    assert len(opened) == 3, opened

    for name in files:
        assert (three_out / name).read_bytes() == (one_out / name).read_bytes(), name
    assert published is not None and published["metrics"]["workers"] == 3
    for key in ("tokensGenerated", "promptTokens", "comparisons", "sftRows", "pairs"):
        assert published["metrics"].get(key) == one["metrics"].get(key), key


def test_a_failed_worker_reruns_alone_and_redoes_only_its_unfinished_chunks(tmp_path, monkeypatch):
    spec, out = _spec_file(tmp_path, "retry", "generate-revisions", "CritiqueRun", SL_SPEC, {"policy": TINY})
    one_spec, one_out = _spec_file(tmp_path, "one", "generate-revisions", "CritiqueRun", SL_SPEC, {"policy": TINY})
    assert run_stage("generate-revisions", str(one_spec)) == 0

    computed: list[int] = []
    real = generate_revisions._critique_chain
    fail_at: set[int] = {2}  # worker 0 of 2 owns red-team chunks 0 and 2 (7 prompts, 4 chunks)

    def chain(backend, const, spec, chunk, index, counter, progress):
        if index in fail_at:
            fail_at.clear()
            raise RuntimeError("node lost")  # what a preempted pod looks like to the stage: it stops
        computed.append(index)
        return real(backend, const, spec, chunk, index, counter, progress)

    monkeypatch.setattr(generate_revisions, "_critique_chain", chain)
    assert run_stage("generate-revisions", str(spec), workers=2, worker=0) == 1
    assert computed == [0]
    assert run_stage("generate-revisions", str(spec), workers=2, worker=1) == 0
    assert computed == [0, 1, 3] and read_manifest(out.as_uri()) is None, "worker 1 does not merge early"
    # The retry of worker 0 redoes chunk 2 only, then merges.
    assert run_stage("generate-revisions", str(spec), workers=2, worker=0) == 0
    assert computed == [0, 1, 3, 2]
    for name in ("revisions.jsonl", "helpful.jsonl", "sft.jsonl"):
        assert (out / name).read_bytes() == (one_out / name).read_bytes(), name


def test_worker_arguments_are_checked_before_any_work(tmp_path, monkeypatch):
    spec, out = _spec_file(tmp_path, "bad", "generate-revisions", "CritiqueRun", SL_SPEC, {"policy": TINY})
    train_spec, _ = _spec_file(tmp_path, "train", "finetune", "CritiqueRun", SL_SPEC, {"policy": TINY})
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    cases = {
        (str(spec), "generate-revisions", 3, 3): "worker index 3 is not in 0..2",
        (str(spec), "generate-revisions", 3, None): "--workers 3 needs --worker K or JOB_COMPLETION_INDEX",
        (str(spec), "generate-revisions", 0, None): "--workers must be at least 1",
        (str(train_spec), "finetune", 2, 0): "stage finetune does not run as data-parallel workers",
    }
    for (path, stage, workers, worker), message in cases.items():
        assert run_stage(stage, path, workers=workers, worker=worker) == 1
        assert message in (tmp_path / "termination-log").read_text(), message
    assert not out.exists()
    # In an Indexed Job's pod the index comes from the Job controller.
    for index in ("1", "0"):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", index)
        assert run_stage("generate-revisions", str(spec), workers=2) == 0
    assert json.loads((out / "manifest.json").read_text())["metrics"]["workers"] == 2


def test_a_worker_runs_its_engines_as_sub_worker_processes_that_publish_what_one_worker_publishes(
        tmp_path, monkeypatch):
    """`--engines G` (a pod with G GPUs and a model that fits one): worker K of N runs sub-workers
    K·G..K·G+G-1 of N·G as processes; together they publish what one worker publishes."""
    monkeypatch.setattr(label_preferences, "CHUNK", 32)  # what the sub-worker processes use
    monkeypatch.setenv("CAI_TERMINATION_LOG", str(tmp_path / "termination-log"))
    pairs = artifact(tmp_path / "pairs", {"pairs.jsonl": jsonl(
        [{"id": f"p{i}", "promptId": f"p{i}", "prompt": f"How do I do thing {i}?",
          "responseA": f"Here is how to do thing {i}.", "responseB": "I can't help with that."}
         for i in range(40)])})  # 80 comparisons: 3 chunks of 32
    kind, spec, models, _, files = STAGES["label-preferences"]
    one_spec, one_out = _spec_file(tmp_path, "one", "label-preferences", kind, spec, models, {"pairs": pairs})
    two_spec, two_out = _spec_file(tmp_path, "two", "label-preferences", kind, spec, models, {"pairs": pairs})
    assert run_stage("label-preferences", str(one_spec)) == 0
    assert run_stage("label-preferences", str(two_spec), workers=2, worker=1, engines=2) == 0
    assert read_manifest(two_out.as_uri()) is None, "sub-workers 2 and 3 of 4 must not merge alone"
    assert run_stage("label-preferences", str(two_spec), workers=2, worker=0, engines=2) == 0
    published = read_manifest(two_out.as_uri())
    assert published is not None and published["metrics"]["workers"] == 4
    for name in files:
        assert (two_out / name).read_bytes() == (one_out / name).read_bytes(), name

    # An engine that fails fails the worker (the pod is retried), and says which.
    broken, _ = _spec_file(tmp_path, "broken", "label-preferences", kind, spec,
                           {"feedback": str(tmp_path / "no-such-model")}, {"pairs": pairs})
    assert run_stage("label-preferences", str(broken), engines=2) == 1
    message = (tmp_path / "termination-log").read_text()
    assert "engine 1 of 2 (worker 0/2) exited with 1" in message and "engine 2 of 2" in message, message
    train_spec, _ = _spec_file(tmp_path, "train", "finetune", "CritiqueRun", SL_SPEC, {"policy": TINY})
    assert run_stage("finetune", str(train_spec), engines=2) == 1
    assert "does not run as data-parallel workers" in (tmp_path / "termination-log").read_text()
