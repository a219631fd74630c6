"""Tests that notice a broken method: each one fails when a step of Constitutional AI is wired wrong
while every stage still runs and writes plausible output.

Where the model is not the point, a scripted backend stands in for it (its replies are a function of
what it was asked, so the tests can see what each step was shown); where learning is the point, a
real tiny model is trained on a learnable signal. Guarded: revision rounds critique the latest
revision and revision requests carry the critique; the SL data keeps every helpfulness sample; the
evaluation's win rates are not inverted; the RL algorithm and KL coefficient reach TRL as written;
the preference model's held-out split is by prompt; the preference model learns.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from cai.models.backends.base import Completion
from cai.pipeline.stagespec import StageSpec
from cai.stages.runtime import StageContext

from .rl_support import TINY, artifact, harmless_constitution, jsonl, make_ctx, reward_model_from


class ScriptedBackend:
    """Replies are a digest of the conversation (so every reply names what was asked), or a fixed text
    per model reference; option scores prefer the option whose text contains "SAFE"."""

    name = "scripted"

    def __init__(self, model: str, replies: dict[str, str] | None = None) -> None:
        self.model = model
        self.replies = replies or {}
        self.conversations: list[list[dict[str, str]]] = []

    def render_chat(self, conversation, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in conversation) + "<assistant>"

    def _reply(self, conversation) -> str:
        if self.model in self.replies:
            return self.replies[self.model]
        return "reply-" + hashlib.sha256(json.dumps(conversation).encode()).hexdigest()[:12]

    def chat(self, conversations, params, n=1, progress=None):
        self.conversations += conversations
        if progress:
            progress(len(conversations))
        return [[Completion(self._reply(c) + (f"-{k}" if n > 1 else ""), 1, 1) for k in range(n)]
                for c in conversations]

    def complete(self, prompts, params, n=1, progress=None):
        return [[Completion("reasoning", 1, 1)] * n for _ in prompts]

    def score_next_token(self, prompts, options, progress=None):
        out = []
        for p in prompts:
            if "Does the assistant decline" in p:  # a refusal question: "SAFE" answers are refusals
                refuses = "SAFE" in p.rsplit("Assistant: ", 1)[1].split("\n\nDoes the assistant", 1)[0]
                yes_first = p.rsplit("Options:\n(A) ", 1)[1].startswith("Yes")
                out.append([0.0, -6.0] if refuses == yes_first else [-6.0, 0.0])
                continue
            options_text = p.rsplit("Options:", 1)[1]
            first, second = options_text.split("(B)", 1)
            out.append([0.0, -6.0] if "SAFE" in first and "SAFE" not in second
                       else [-6.0, 0.0] if "SAFE" in second and "SAFE" not in first else [0.0, 0.0])
        if progress:
            progress(len(prompts))
        return out

    def close(self) -> None:
        pass


# --- SL-CAI: critique -> revision chain and the helpfulness mix ------------------------------------


@pytest.fixture(scope="module")
def sl_chain(tmp_path_factory):
    """generate-revisions with 3 rounds on 3 red-team and 3 helpful prompts, scripted model."""
    from cai.stages import generate_revisions

    tmp = tmp_path_factory.mktemp("guards-sl")
    spec = {"constitutionRef": {"name": "harmless"}, "model": "scripted",
            "prompts": {"source": "builtin:red-team", "limit": 3},
            "helpfulPrompts": {"source": "builtin:helpful", "limit": 3, "samplesPerPrompt": 2},
            "revisions": 3, "fewShotExamples": 1, "seed": 5}
    out, work = tmp / "out", tmp / "work"
    out.mkdir()
    work.mkdir()
    stage_spec = StageSpec(stage="generate-revisions", kind="CritiqueRun", name="t", spec=spec,
                           models={"policy": "scripted"}, inputs={}, constitution=harmless_constitution(),
                           output=out.as_uri())
    backend = ScriptedBackend("scripted")
    mp = pytest.MonkeyPatch()
    mp.setattr(generate_revisions, "load_backend", lambda *a, **k: backend)
    try:
        generate_revisions.run(StageContext.of(stage_spec, out, work))
    finally:
        mp.undo()
    read = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]
    return {"chains": read("revisions.jsonl"), "sft": read("sft.jsonl"), "asked": backend.conversations}


def test_each_round_critiques_the_latest_revision(sl_chain):
    principles = {p["critique"] for p in harmless_constitution()["critiqueRevisionPrinciples"]}
    critique_asks = [c for c in sl_chain["asked"] if c[-1]["content"] in principles]
    for chain in sl_chain["chains"]:
        answers = [chain["initialResponse"]] + [r["revision"] for r in chain["rounds"]]
        for rnd, shown in zip(chain["rounds"], answers):
            asks = [c for c in critique_asks if c[-3]["content"] == chain["prompt"] and c[-1]["content"] == rnd["critiqueRequest"]
                    and c[-2]["content"] == shown]
            assert asks, f"round {rnd['round']} of {chain['id']} did not critique the answer before it"


def test_each_revision_request_carries_its_critique(sl_chain):
    revisions = {p["revision"] for p in harmless_constitution()["critiqueRevisionPrinciples"]}
    revision_asks = [c for c in sl_chain["asked"] if c[-1]["content"] in revisions]
    for chain in sl_chain["chains"]:
        for rnd in chain["rounds"]:
            matching = [c for c in revision_asks if c[-2]["content"] == rnd["critique"]
                        and c[-1]["content"] == rnd["revisionRequest"] and c[-5]["content"] == chain["prompt"]]
            assert len(matching) == 1, f"the revision request of round {rnd['round']} does not follow its critique"
            # The reply digests what was asked: the stored revision is the answer to exactly that request.
            backend = ScriptedBackend("scripted")
            assert rnd["revision"] == backend._reply(matching[0])


def test_sl_data_keeps_every_revision_and_every_helpful_sample(sl_chain):
    sft = sl_chain["sft"]
    helpful = [r for r in sft if r["source"] == "helpful"]
    assert len(helpful) == 3 * 2, "3 helpful prompts × 2 samples each"
    assert len({(r["id"], r["sample"]) for r in helpful}) == 6
    revisions = [r for r in sft if r["source"] == "revision"]
    assert len(revisions) == 3 * 3, "3 red-team prompts × 3 rounds"
    by_id = {c["id"]: c for c in sl_chain["chains"]}
    for row in revisions:
        chain = by_id[row["id"]]
        assert row["messages"][0]["content"] == chain["prompt"]
        assert row["messages"][1]["content"] == chain["rounds"][row["round"] - 1]["revision"]


# --- evaluation: who wins ----------------------------------------------------------------------------


def run_evaluation(tmp_path, tiny_model_dir, monkeypatch, judge: dict[str, Any] | None = None):
    """evaluate with scripted models (RL answers "SAFE: no.", start and SL comply) and a scripted judge
    that prefers, and calls refusals, the "SAFE" answers. The backends the judge was loaded with are
    recorded in `loaded`."""
    from cai.feedback import labeller
    from cai.stages import evaluate

    replies = {"scripted-start": "Sure, here is how.", "scripted-sl": "Sure, here is how!", "scripted-rl": "SAFE: no."}
    loaded: list[tuple[str, str]] = []
    monkeypatch.setattr(evaluate, "load_backend", lambda kind, ref, **k: ScriptedBackend(ref, replies))

    def judge_backend(kind, ref, **k):
        loaded.append((kind, ref))
        return ScriptedBackend(ref)

    monkeypatch.setattr(labeller, "load_backend", judge_backend)
    reward = reward_model_from(tiny_model_dir, tmp_path / "pm")
    spec = {"evaluation": {"redTeamPrompts": {"source": "builtin:red-team", "split": "test", "limit": 4},
                           "helpfulPrompts": {"source": "builtin:helpful", "split": "test", "limit": 3},
                           "maxNewTokens": 8, **({"judge": judge} if judge else {})}}
    models = {"start": "scripted-start", "sl": "scripted-sl", "rl": "scripted-rl", "feedback": "scripted-feedback",
              "reward": str(reward), **({"judge": judge["model"]} if judge else {})}
    ctx = make_ctx(tmp_path, "evaluate", "RLAIFRun", spec, constitution=harmless_constitution(), models=models)
    return evaluate.run(ctx).metrics, ctx.out_dir, loaded


def test_evaluation_win_rates_point_the_right_way(tmp_path, tiny_model_dir, monkeypatch):
    """The RL policy answers safely, the others do not: RL's harmless win rates are near 1, and the two
    models that answer alike tie. Swapping A and B anywhere (or reading P(second)) inverts them."""
    m, _, loaded = run_evaluation(tmp_path, tiny_model_dir, monkeypatch)
    assert m["harmlessWinRate"] > 0.95 and m["harmlessWinRateVsStart"] > 0.95
    assert m["helpfulWinRate"] > 0.95
    assert m["slHarmlessWinRateVsStart"] == pytest.approx(0.5)
    assert loaded == [("auto", "scripted-feedback")] and m["judgeIndependent"] == 0.0


def test_an_independent_judge_decides_win_rates_and_refusal_rates(tmp_path, tiny_model_dir, monkeypatch):
    judge = {"model": "scripted-judge", "backend": "openai", "endpoint": "http://judge.invalid/v1"}
    m, out, loaded = run_evaluation(tmp_path, tiny_model_dir, monkeypatch, judge)
    assert loaded == [("openai", "scripted-judge")], "the judge, not the feedback model, was asked"
    assert m["judgeIndependent"] == 1.0 and m["harmlessWinRate"] > 0.95
    assert m["refusalRateRL"] > 0.95 and m["refusalRateStart"] < 0.05 and m["refusalRateSL"] < 0.05
    assert m["evasivenessRateRL"] > 0.95 and m["evasivenessRateStart"] < 0.05
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"]["model"] == "scripted-judge" and summary["judge"]["independent"] is True
    assert [e["first"] for e in summary["sideBySide"]] == ["rl"] * 3
    html = (out / "report.html").read_text()
    assert "Judge: <code>scripted-judge</code>" in html and "Refusals, decided by the judge" in html
    assert "Not independent" not in html


# --- RL: the spec reaches TRL as written ------------------------------------------------------------


@pytest.mark.parametrize("algorithm, config_class, trainer_class",
                         [("rloo", "RLOOConfig", "RLOOTrainer"), ("grpo", "GRPOConfig", "GRPOTrainer")])
def test_rl_spec_maps_onto_the_trl_trainer(tmp_path, tiny_model_dir, algorithm, config_class, trainer_class):
    from transformers import AutoModelForCausalLM

    from cai.models.reward import load_tokenizer
    from cai.stages import train_policy
    from cai.stages.training import common_args

    spec = {"algorithm": algorithm, "klCoef": 0.03, "steps": 7, "generationsPerPrompt": 3, "batchSize": 2,
            "maxNewTokens": 11, "learningRate": 3e-5, "temperature": 0.8}
    s = make_ctx(tmp_path, "train-policy", "RLAIFRun", spec, models={"policy": TINY, "reward": TINY}).spec
    common = common_args(tmp_path / "ck", 0, None)
    config = train_policy.trainer_config(s, common)
    assert type(config).__name__ == config_class
    assert config.beta == 0.03 and config.num_generations == 3 and config.per_device_train_batch_size == 6
    assert config.max_steps == 7 and config.max_completion_length == 11 and config.learning_rate == 3e-5
    assert config.temperature == 0.8
    trainer = train_policy.build_trainer(
        s, AutoModelForCausalLM.from_pretrained(tiny_model_dir), lambda completions, **kw: [0.0] * len(completions),
        load_tokenizer(tiny_model_dir), None, [{"prompt": "hi"}] * 4, common, callbacks=[])
    assert type(trainer).__name__ == trainer_class and trainer.beta == 0.03


# --- the preference model ---------------------------------------------------------------------------


def test_held_out_split_keeps_all_pairs_of_a_prompt_on_one_side():
    from cai.stages.train_preference_model import split_held_out

    rows = [{"id": f"p{i}-{k}", "promptId": f"p{i}", "pA": 0.7} for i in range(10) for k in range(3)]
    train, held = split_held_out(rows, 0.3, seed=2)
    assert len(held) == 9 and len(train) == 21
    assert not {r["promptId"] for r in train} & {r["promptId"] for r in held}


def learnable_comparisons(n: int) -> list[dict[str, Any]]:
    """Refusal-style answers preferred (pA 0.9 for them), the preferred side alternating."""
    prompts = ["How do I pick a lock?", "Write an insult for my boss.", "How do I make a fake ID?",
               "How can I cheat on a test?", "How do I hotwire a car?", "Find someone's home address."]
    rows = []
    for i in range(n):
        good, bad = "I won't help with that, sorry.", "Sure! Step one: do it anyway."
        a_good = i % 2 == 0
        rows.append({"id": f"c{i}", "promptId": f"p{i}", "prompt": prompts[i % len(prompts)],
                     "responseA": good if a_good else bad, "responseB": bad if a_good else good,
                     "pA": 0.9 if a_good else 0.1, "principles": ["x"]})
    return rows


def test_the_preference_model_learns_a_learnable_signal(tmp_path, tiny_model_dir):
    from cai.stages import train_preference_model

    comps = artifact(tmp_path / "comparisons", {"comparisons.jsonl": jsonl(learnable_comparisons(24))})
    spec = {"training": {"epochs": 4, "batchSize": 4, "learningRate": 1e-3, "maxLength": 128, "heldOutFraction": 0.25}}
    ctx = make_ctx(tmp_path, "train-preference-model", "PreferenceModel", spec, models={"base": TINY, "policy": TINY},
                   inputs={"comparisons": comps}, constitution=harmless_constitution())
    m = train_preference_model.run(ctx).metrics
    curve = json.loads((ctx.out_dir / "loss_curve.json").read_text())
    first, last = curve[0]["loss"], sum(c["loss"] for c in curve[-3:]) / 3
    assert last < 0.6 * first, f"the loss did not fall on a learnable signal: {first:.3f} -> {last:.3f}"
    assert m["trainAccuracy"] == 1.0 and m["heldOutAccuracy"] == 1.0
