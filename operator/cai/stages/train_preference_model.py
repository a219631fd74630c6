"""Stage `train-preference-model` (RL-CAI): a reward model trained on the
AI-labelled comparisons with the soft-label loss

    L = -( p · log σ(rA − rB) + (1 − p) · log σ(rB − rA) )

where p = pA is the feedback model's probability that responseA is better.

Why a RewardTrainer subclass: TRL 1.16's `RewardTrainer` hard-codes the Bradley-Terry loss on
(chosen, rejected) pairs, `-log σ(r_chosen − r_rejected)` (optionally minus a margin), and ignores
`compute_loss_func`; a margin cannot express a soft target. Everything else it does is what we
want — `AutoModelForSequenceClassification` with one output, chosen/rejected batching into one
forward pass, dropout disabled, DeepSpeed/accelerate, checkpoints. So `SoftLabelRewardTrainer`
keeps all of it, feeds responseA as "chosen" and responseB as "rejected" with a per-row `p`
column, and overrides only `compute_loss`. With p ∈ {0, 1} the loss is exactly TRL's.
`softLabels: false` rounds p to {0, 1} (exact ties are dropped) to compare with the paper's hard labels.

Texts are tokenized the way TRL's RLOO/GRPO trainers will score completions later (chat template of
[user prompt, assistant response], no extra special tokens), so the PM sees the same text at
training and at RL time. Before loading any weights: labels are validated, and the PM base's
tokenizer must equal the policy's (the RL trainers decode policy tokens to text and re-tokenize it
for the PM; a different vocabulary would make the rewards meaningless for the policy's outputs).

Outputs: the Hugging Face model dir (+ tokenizer, model card), `heldout_predictions.jsonl`
(rA, rB, σ(rA−rB), pA per held-out comparison, read by `evaluate` for the reliability diagram),
`loss_curve.json`, `training_log.json`. Metrics: heldOutAccuracy, calibrationError (ECE, 10 bins),
comparisons, losses.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..api.kinds import PreferenceModelSpec
from ..feedback.labels import label_problem
from ..feedback.statistics import accuracy, expected_calibration_error, sigmoid
from ..models.resolve import resolve_model
from ..models.reward import (
    RewardModelError,
    load_reward_model,
    load_tokenizer,
    score_texts,
    tokenize_rows,
    vocabulary_problem,
)
from ..store import read_jsonl, write_jsonl
from .runtime import StageContext, StageError, StageResult
from .training import (
    common_args,
    deepspeed_config,
    is_main_process,
    keep_checkpoints,
    last_checkpoint,
    loss_curve,
    nan_guard,
    raise_if_nan,
    step_progress,
    write_model_card,
)

# --- pure helpers (no torch) ----------------------------------------------------------------------


def load_comparisons(path: Path) -> list[dict[str, Any]]:
    """Comparison rows with validated labels (StageError naming the first bad row)."""
    rows = read_jsonl(path)
    if not rows:
        raise StageError(f"{path.name} has no comparisons")
    for n, r in enumerate(rows):
        missing = [k for k in ("prompt", "responseA", "responseB") if not isinstance(r.get(k), str)]
        if missing:
            raise StageError(f"{path.name} line {n + 1}: missing {', '.join(missing)}")
        problem = label_problem(r.get("pA"))
        if problem:
            raise StageError(
                f"{path.name} line {n + 1} (comparison {r.get('id', n)}): label pA is {problem}; "
                "labels must be finite probabilities in [0, 1]"
            )
    return rows


def training_targets(rows: list[dict[str, Any]], soft: bool) -> tuple[list[dict[str, Any]], int]:
    """(rows with a `p` target, ties dropped). Hard labels round pA to {0, 1}; an exact 0.5 has
    no hard label and is dropped."""
    out, ties = [], 0
    for r in rows:
        p = float(r["pA"])
        if not soft:
            if p == 0.5:
                ties += 1
                continue
            p = 1.0 if p > 0.5 else 0.0
        out.append({**r, "p": p})
    return out, ties


def split_held_out(
    rows: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out): a seeded shuffle, held out by prompt so the two responses to one prompt
    never sit on both sides (pairs of one prompt share their prompt text)."""
    if fraction <= 0:
        return list(rows), []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("promptId", r.get("id"))), []).append(r)
    keys = sorted(groups)
    random.Random(f"{seed}:held-out").shuffle(keys)
    n_held = max(1, round(len(keys) * fraction)) if len(keys) > 1 else 0
    held_keys = set(keys[:n_held])
    train = [r for k in sorted(groups) if k not in held_keys for r in groups[k]]
    held = [r for k in sorted(groups) if k in held_keys for r in groups[k]]
    return train, held


def soft_label_loss(reward_a, reward_b, p):
    """The soft-label preference loss (module docstring), mean over the batch (torch tensors)."""
    import torch.nn.functional as F

    margin = reward_a - reward_b
    return -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin)).mean()


# --- trainer ---------------------------------------------------------------------------------------


def _soft_label_trainer_class():
    """Built lazily: TRL/torch load only when the stage runs."""
    import torch
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class SoftLabelCollator(DataCollatorForPreference):
        """TRL's preference collator (A rows then B rows, right-padded) plus the soft target `p`."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            out["p"] = torch.tensor([float(e["p"]) for e in examples], dtype=torch.float32)
            return out

    class SoftLabelRewardTrainer(RewardTrainer):
        """RewardTrainer with the soft-label loss; see the module docstring."""

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "p"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            p = inputs.pop("p")
            outputs = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
            )
            rewards_a, rewards_b = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = soft_label_loss(rewards_a, rewards_b, p.to(rewards_a.dtype))
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_a + rewards_b) ** 2)
            with torch.no_grad():
                agree = ((rewards_a > rewards_b) == (p > 0.5)).float()[p != 0.5]
                if agree.numel():
                    self._metrics[mode]["accuracy"].append(self.accelerator.gather_for_metrics(agree.mean()).mean().item())
                margin = self.accelerator.gather_for_metrics((rewards_a - rewards_b).mean()).mean().item()
                self._metrics[mode]["margin"].append(margin)
                self._metrics[mode]["mean_reward"].append(self.accelerator.gather(outputs.logits).mean().item())
            return (loss, outputs) if return_outputs else loss

    return SoftLabelRewardTrainer, SoftLabelCollator


def predict(model, tokenizer, rows: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """rA, rB and q = σ(rA − rB) for each comparison row."""
    n = len(rows)
    scores = score_texts(model, tokenizer, [(r["prompt"], r["responseA"]) for r in rows]
                         + [(r["prompt"], r["responseB"]) for r in rows], batch_size)
    return [{"id": r.get("id"), "rA": scores[k], "rB": scores[n + k], "q": sigmoid(scores[k] - scores[n + k]),
             "pA": float(r["pA"])} for k, r in enumerate(rows)]


def run(ctx: StageContext[PreferenceModelSpec]) -> StageResult:
    import datasets
    import torch
    from trl import RewardConfig

    spec = ctx.spec
    tr = spec.training
    ds_config = deepspeed_config(tr.deepspeed, "spec.training.deepspeed")
    rows = load_comparisons(ctx.input_dir("comparisons") / "comparisons.jsonl")
    targets, ties = training_targets(rows, spec.labeling.soft_labels)
    if not targets:
        raise StageError("no comparisons left to train on (every hard label was an exact tie)")
    train_rows, held_rows = split_held_out(targets, tr.held_out_fraction, spec.seed)

    base_ref, policy_ref = ctx.model("base"), ctx.model("policy")
    base_dir = resolve_model(base_ref)
    tokenizer = load_tokenizer(base_dir)
    if policy_ref != base_ref:
        problem = vocabulary_problem(
            base_ref,
            tokenizer,
            policy_ref,
            load_tokenizer(resolve_model(policy_ref)),
            "preference model base",
        )
        if problem:
            raise StageError(problem)
    if not tokenizer.chat_template:
        raise StageError(
            f"model {base_ref} has no chat template; the preference model scores chat transcripts"
        )
    ctx.log(f"{len(train_rows)} training / {len(held_rows)} held-out comparisons, "
            f"{'soft' if spec.labeling.soft_labels else 'hard'} labels, base {base_ref}")

    torch.manual_seed(spec.seed)  # the reward head is initialised at random
    try:
        model = load_reward_model(
            base_dir, base_ref, torch.float32 if not torch.cuda.is_available() else "auto"
        )
    except RewardModelError as e:
        raise StageError(str(e)) from None
    model.config.pad_token_id = tokenizer.pad_token_id

    trainer_cls, collator_cls = _soft_label_trainer_class()
    checkpoints = ctx.work_dir / "checkpoints"
    config = RewardConfig(
        **common_args(checkpoints, spec.seed, ds_config),
        num_train_epochs=tr.epochs,
        learning_rate=tr.learning_rate,
        per_device_train_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.gradient_accumulation_steps,
        max_length=tr.max_length,
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a float below 1 is a ratio of the total steps (transformers 5)
    )
    train_data = tokenize_rows(train_rows, tokenizer)
    too_long = sum(max(len(t["chosen_ids"]), len(t["rejected_ids"])) > tr.max_length for t in train_data)
    if too_long == len(train_data):
        raise StageError(
            f"every training comparison is longer than spec.training.maxLength={tr.max_length} tokens"
        )
    guard = nan_guard()
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(train_data),
        processing_class=tokenizer,
        data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id),
        callbacks=[guard, keep_checkpoints(ctx, checkpoints), step_progress(ctx, "train preference model")],
    )
    resume = last_checkpoint(checkpoints)
    if resume:
        ctx.log(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    raise_if_nan(guard, checkpoints)
    curve = loss_curve(trainer.state.log_history)

    trained = trainer.model
    held_pred = (
        predict(trained, tokenizer, held_rows, batch_size=max(2, tr.batch_size * 2)) if held_rows else []
    )
    train_pred = predict(trained, tokenizer, train_rows[:256], batch_size=max(2, tr.batch_size * 2))
    held_acc = accuracy(held_pred)
    ece = expected_calibration_error(held_pred)
    if is_main_process():
        trained.save_pretrained(ctx.out_dir, safe_serialization=True)
        tokenizer.save_pretrained(ctx.out_dir)
        write_jsonl(ctx.out_dir / "heldout_predictions.jsonl", held_pred)
        (ctx.out_dir / "loss_curve.json").write_text(json.dumps(curve, indent=1))
        (ctx.out_dir / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        write_model_card(
            ctx.out_dir,
            title="RL-CAI preference model",
            base_model=base_ref,
            stage="train-preference-model",
            details={
                "comparisons (train / held out)": f"{len(train_rows)} / {len(held_rows)}",
                "labels": "soft (feedback-model probabilities)"
                if spec.labeling.soft_labels
                else "hard (0/1)",
                "loss": "-(p·log σ(rA−rB) + (1−p)·log σ(rB−rA))",
                "epochs": tr.epochs,
                "learning rate": tr.learning_rate,
                "held-out accuracy": f"{held_acc:.3f}" if held_acc is not None else "n/a",
                "ECE (10 bins)": f"{ece:.3f}" if ece is not None else "n/a",
            },
        )
    metrics: dict[str, Any] = {
        "comparisons": len(rows),
        "trainComparisons": len(train_rows),
        "heldOutComparisons": len(held_rows),
        "tooLongDropped": too_long,
        "tiesDropped": ties,
        "softLabels": spec.labeling.soft_labels,
        "trainSteps": trainer.state.global_step,
        "trainLoss": round(float(result.training_loss), 6),
        "firstLoss": curve[0]["loss"] if curve else None,
        "finalLoss": curve[-1]["loss"] if curve else None,
    }
    train_acc = accuracy(train_pred)
    if train_acc is not None:
        metrics["trainAccuracy"] = round(train_acc, 6)
    if held_acc is not None:
        metrics["heldOutAccuracy"] = round(held_acc, 6)
    if ece is not None:
        metrics["calibrationError"] = round(ece, 6)
    return StageResult(kind="model", metrics={k: v for k, v in metrics.items() if v is not None})
