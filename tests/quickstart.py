"""The quickstart (examples/quickstart's CritiqueRun, PreferenceModel and RLAIFRun) shrunk to the tiny random
model, a few prompts and steps: what the e2e suite applies to the cluster and what the README-commands test
runs locally, so both exercise the quickstart's shape at test speed."""
from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.cluster.control_plane import REPO

TINY = "builtin:tiny-random"
SMALL_GENERATION = {"maxNewTokens": 16, "batchSize": 8}
SMALL_TRAINING = {"epochs": 1, "batchSize": 4, "maxLength": 256}


def small_quickstart(resources: dict[str, Any] | None = None) -> list[dict]:
    """examples/quickstart's runs (SL and RL), shrunk to the tiny random model, a few prompts and steps;
    `resources` is merged into each run's spec.resources."""
    docs = [d for p in sorted((REPO / "examples" / "quickstart").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    runs = [copy.deepcopy(d) for d in docs if d and d.get("kind") in ("CritiqueRun", "PreferenceModel", "RLAIFRun")]
    assert {r["kind"] for r in runs} == {"CritiqueRun", "PreferenceModel", "RLAIFRun"}, "the quickstart changed shape"
    for run in runs:
        spec = run["spec"]
        if resources:
            spec["resources"] = {**spec.get("resources", {}), **resources}
        spec["prompts"] = {**spec.get("prompts", {}), "limit": 4}
        for key in ("model", "feedbackModel"):
            if key in spec:
                spec[key] = TINY
        if "model" in spec.get("policy", {}):
            spec["policy"]["model"] = TINY
        if "generation" in spec or run["kind"] != "RLAIFRun":
            spec["generation"] = {**spec.get("generation", {}), **SMALL_GENERATION}
        if run["kind"] == "CritiqueRun":
            if "helpfulPrompts" in spec:
                spec["helpfulPrompts"]["limit"] = 2
            spec.update(revisions=2, fewShotExamples=1)
            spec["finetune"] = {**spec.get("finetune", {}), **SMALL_TRAINING}
        elif run["kind"] == "PreferenceModel":
            spec["training"] = {**spec.get("training", {}), **SMALL_TRAINING}
            spec.pop("pairsPerPrompt", None)
        else:
            spec.update(steps=2, generationsPerPrompt=2, batchSize=2, maxNewTokens=16)
            ev = spec.setdefault("evaluation", {})
            ev["redTeamPrompts"] = {**ev.get("redTeamPrompts", {"source": "builtin:red-team", "split": "test"}), "limit": 2}
            ev["helpfulPrompts"] = {**ev.get("helpfulPrompts", {"source": "builtin:helpful", "split": "test"}), "limit": 2}
            ev["maxNewTokens"] = 16
    return runs
