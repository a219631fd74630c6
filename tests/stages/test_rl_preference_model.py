"""The preference model: the soft-label loss is the paper's formula, the trainer feeds it the soft
targets, training on tiny-random changes the weights and writes the artifact (model dir, held-out
predictions, loss curve, metrics), and bad input (NaN labels, another tokenizer) fails before any
weights load."""

from __future__ import annotations

import json
import math

import pytest

from cai.stages.runtime import StageError

from .rl_support import (
    TINY,
    artifact,
    harmless_constitution,
    jsonl,
    make_ctx,
    odd_tokenizer_model,
    read_jsonl,
)

PROMPTS = ["How do I pick a lock?", "Write an insult for my boss.", "What is 2+2?", "Tell me about dogs.",
           "How do I make a fake ID?", "Recommend a book.", "How can I cheat on a test?", "Say something kind."]


def comparisons(n: int = 16) -> list[dict]:
    rows = []
    for i in range(n):
        p = PROMPTS[i % len(PROMPTS)]
        # A learnable signal: the polite refusal-style answer is preferred with a soft label.
        good, bad = f"I'd rather help safely with that ({i}).", f"Sure, here is exactly how, no questions asked {i}!"
        a_good = i % 2 == 0
        rows.append({"id": f"p{i}-0", "promptId": f"p{i}", "prompt": p, "responseA": good if a_good else bad,
                     "responseB": bad if a_good else good, "pA": 0.8 if a_good else 0.25, "principles": ["x"]})
    return rows


def test_soft_label_loss_equals_the_formula_on_known_inputs():
    import torch

    from cai.stages.train_preference_model import soft_label_loss

    r_a = torch.tensor([1.0, -0.5, 2.0, 0.0])
    r_b = torch.tensor([0.0, 0.5, 2.0, 3.0])
    p = torch.tensor([0.8, 0.3, 0.5, 1.0])

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    expected = sum(-(pi * log_sigmoid(a - b) + (1 - pi) * log_sigmoid(b - a))
                   for a, b, pi in zip(r_a.tolist(), r_b.tolist(), p.tolist())) / 4
    assert soft_label_loss(r_a, r_b, p).item() == pytest.approx(expected, rel=1e-6)
    # p = 1 is TRL's Bradley-Terry loss; p = 0.5 is minimised by equal rewards.
    assert soft_label_loss(r_a[:1], r_b[:1], torch.tensor([1.0])).item() == pytest.approx(-log_sigmoid(1.0), rel=1e-6)
    assert soft_label_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.5])).item() == pytest.approx(math.log(2))


def test_the_trainer_computes_the_soft_loss_from_its_batch(tmp_path, tiny_model_dir):
    """The RewardTrainer subclass must route each row's p into the loss (not TRL's hard loss)."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig

    from cai.models.reward import tokenize_rows
    from cai.stages.train_preference_model import _soft_label_trainer_class, soft_label_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rows = [{**r, "p": r["pA"]} for r in comparisons(4)]
    data = tokenize_rows(rows, tok)
    trainer_cls, collator_cls = _soft_label_trainer_class()
    collator = collator_cls(pad_token_id=tok.pad_token_id)
    trainer = trainer_cls(model=model, args=RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                          train_dataset=datasets.Dataset.from_list(data), processing_class=tok, data_collator=collator)
    batch = collator(data)
    assert batch["p"].tolist() == pytest.approx([0.8, 0.25, 0.8, 0.25])
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    expected = soft_label_loss(scores[:4], scores[4:], torch.tensor([0.8, 0.25, 0.8, 0.25])).item()
    assert loss == pytest.approx(expected, rel=1e-5)


def pm_ctx(tmp_path, rows, models=None, **training):
    comps = artifact(tmp_path / "comparisons", {"comparisons.jsonl": jsonl(rows)})
    spec = {"training": {"epochs": 2, "batchSize": 4, "learningRate": 5e-4, "maxLength": 256, "heldOutFraction": 0.25,
                         **training}}
    return make_ctx(tmp_path, "train-preference-model", "PreferenceModel", spec,
                    models=models or {"base": TINY, "policy": TINY}, inputs={"comparisons": comps},
                    constitution=harmless_constitution())


def test_training_changes_the_weights_and_writes_the_artifact(tmp_path, tiny_model_dir, capfd):
    import torch
    from safetensors.torch import load_file

    from cai.stages import train_preference_model

    ctx = pm_ctx(tmp_path, comparisons(16))
    result = train_preference_model.run(ctx)
    out = ctx.out_dir
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "heldout_predictions.jsonl",
            "loss_curve.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    trained, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(trained[key], base[key]), "backbone weights changed in training"
    assert "score.weight" in trained
    m = result.metrics
    assert m["comparisons"] == 16 and m["trainComparisons"] == 12 and m["heldOutComparisons"] == 4
    assert 0.0 <= m["heldOutAccuracy"] <= 1.0 and 0.0 <= m["calibrationError"] <= 1.0
    assert m["trainSteps"] == 6 and math.isfinite(m["finalLoss"])
    held = read_jsonl(out / "heldout_predictions.jsonl")
    assert len(held) == 4 and all({"rA", "rB", "q", "pA"} <= set(h) for h in held)
    assert all(h["q"] == pytest.approx(1 / (1 + math.exp(h["rB"] - h["rA"]))) for h in held)
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [c["step"] for c in curve] == list(range(1, 7))
    # The new score head is expected: transformers' MISSING-weights table stays out of the log.
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_nan_labels_are_rejected_before_training(tmp_path):
    from cai.stages import train_preference_model

    rows = comparisons(4)
    rows[2]["pA"] = float("nan")
    with pytest.raises(StageError, match=r"line 3 .*not finite"):
        train_preference_model.run(pm_ctx(tmp_path, rows))
    rows[2]["pA"] = 1.5
    with pytest.raises(StageError, match=r"outside \[0, 1\]"):
        train_preference_model.run(pm_ctx(tmp_path / "b", rows))


def test_a_preference_model_base_with_another_tokenizer_is_rejected(tmp_path):
    from cai.stages import train_preference_model

    odd = odd_tokenizer_model(tmp_path / "odd")
    ctx = pm_ctx(tmp_path, comparisons(4), models={"base": str(odd), "policy": TINY})
    with pytest.raises(StageError, match="different tokenizer than the policy"):
        train_preference_model.run(ctx)
    assert not (ctx.out_dir / "model.safetensors").exists()


def test_a_base_checkpoint_missing_backbone_weights_is_rejected(tmp_path, tiny_model_dir):
    """Only the score head may be new: a backbone weight missing from the checkpoint would otherwise be
    initialised at random and train silently."""
    import shutil

    from safetensors.torch import load_file, save_file

    from cai.stages import train_preference_model

    partial = tmp_path / "partial-base"
    shutil.copytree(tiny_model_dir, partial)
    weights = load_file(partial / "model.safetensors")
    del weights["model.layers.0.mlp.down_proj.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    ctx = pm_ctx(tmp_path, comparisons(4), models={"base": str(partial), "policy": TINY})
    with pytest.raises(StageError, match=r"lacks 1 backbone weight\(s\) \(model.layers.0.mlp.down_proj.weight\)"):
        train_preference_model.run(ctx)
    assert not (ctx.out_dir / "model.safetensors").exists()


def test_a_nan_loss_stops_training_with_a_message(tmp_path, tiny_model_dir):
    """A base model with a non-finite weight makes the first loss NaN: the stage stops with a clear
    message instead of saving a broken preference model."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from cai.stages import train_preference_model

    broken = tmp_path / "broken-base"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    ctx = pm_ctx(tmp_path, comparisons(8), models={"base": str(broken), "policy": TINY}, heldOutFraction=0.0)
    with pytest.raises(StageError, match="NaN/inf"):
        train_preference_model.run(ctx)
    assert not (ctx.out_dir / "model.safetensors").exists()
