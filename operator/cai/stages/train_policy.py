"""Stage `train-policy` (RL-CAI): RL of the policy against the preference model
with a KL penalty to the starting policy, through TRL.

`algorithm: rloo` (default) runs `RLOOTrainer` (REINFORCE leave-one-out: the KL to the reference is
subtracted from the sequence reward, β·KL); `grpo` runs `GRPOTrainer` (group-normalised advantages,
β·KL in the per-token loss). The paper used PPO; both are the maintained on-policy trainers of TRL
1.16 that need no value model, which keeps a laptop run feasible. The preference model is passed as
`reward_funcs` (a sequence-classification model instance with its tokenizer as reward processing
class): TRL renders each prompt + completion with the chat template and scores it, exactly as
`train-preference-model` tokenized its training pairs.

The spec maps onto the TRL config in one place, `trainer_config` (advantages normalised by the
reward spread in both algorithms). The reference model is the starting policy (TRL reloads it from
the policy directory, also when resuming). Every logged step appends reward mean/std, KL, loss and
sample completions to `rl_log.jsonl` (also in the stage log); checkpoints live in the work dir and a
rerun resumes from the newest. Output: the policy (Hugging Face dir + tokenizer + model card), `rl_log.jsonl`,
`training_log.json`. Before loading weights, the PM's tokenizer must equal the policy's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..api.kinds import RLAIFRunSpec
from ..data.prompts import PromptSourceError, load_prompts
from ..models.resolve import resolve_model
from ..models.reward import load_tokenizer, vocabulary_problem
from .runtime import StageContext, StageError, StageResult
from .training import (
    common_args,
    deepspeed_config,
    is_main_process,
    keep_checkpoints,
    last_checkpoint,
    nan_guard,
    raise_if_nan,
    write_model_card,
)

SAMPLES_PER_STEP = 2  # sample completions kept per logged step


def _text(message: Any) -> str:
    """Plain text of a TRL prompt/completion (a string or a list of chat messages)."""
    if isinstance(message, str):
        return message
    if isinstance(message, list) and message:
        last = message[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    return ""


def rl_log_callback(path: Path, log):
    """A TrainerCallback writing one JSON line per logged training step (and a short log line)."""
    from transformers import TrainerCallback

    class RLLog(TrainerCallback):
        trainer: Any = None  # set after the trainer exists: sample completions live in its `_logs`

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero or "reward" not in logs:
                return
            entry: dict[str, Any] = {"step": state.global_step}
            for key, name in (
                ("reward", "reward"),
                ("reward_std", "rewardStd"),
                ("kl", "kl"),
                ("loss", "loss"),
                ("completions/mean_length", "completionLength"),
                ("entropy", "entropy"),
                ("learning_rate", "learningRate"),
            ):
                value = logs.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    entry[name] = float(value)
            entry["samples"] = self._samples()
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            kl = f" kl={entry['kl']:.4f}" if "kl" in entry else ""
            log(
                f"step {state.global_step}/{state.max_steps}: "
                f"reward={entry.get('reward', float('nan')):.4f}{kl} "
                f"len={entry.get('completionLength', 0):.0f}"
            )

        def _samples(self) -> list[dict[str, Any]]:
            # TRL keeps the latest generation batch for its own completion tables; read it defensively
            # (a private attribute: if a TRL release renames it we log no samples rather than fail).
            logs = getattr(self.trainer, "_logs", None)
            if not isinstance(logs, dict) or not logs.get("prompt"):
                return []
            prompts, completions = list(logs["prompt"]), list(logs["completion"])
            rewards: list[Any] = list(next(iter(logs.get("rewards", {}).values()), []))
            out = []
            for k in range(min(SAMPLES_PER_STEP, len(prompts))):
                i = len(prompts) - 1 - k * max(1, len(prompts) // SAMPLES_PER_STEP)
                out.append({"prompt": _text(prompts[i]), "completion": _text(completions[i]),
                            "reward": float(rewards[i]) if i < len(rewards) else None})
            return out

    return RLLog()


def read_rl_log(path: Path) -> list[dict[str, Any]]:
    """Entries of rl_log.jsonl, one per step (a resumed run's repeated steps: the last one wins)."""
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[int(entry["step"])] = entry
    return [by_step[k] for k in sorted(by_step)]


def _tail_mean(entries: list[dict[str, Any]], key: str, head: bool = False) -> float | None:
    from ..feedback.statistics import quarter_mean

    return quarter_mean([e[key] for e in entries if key in e], head=head)


def trainer_config(spec: RLAIFRunSpec, common: dict[str, Any]) -> Any:
    """The TRL config of `spec.algorithm` (RLOOConfig or GRPOConfig): the one place the spec maps to TRL.

    klCoef → beta, generationsPerPrompt → num_generations, batchSize prompts → batchSize ×
    generationsPerPrompt completions per device step, steps → max_steps, maxNewTokens →
    max_completion_length. Advantages are normalised by the reward spread in both algorithms (RLOO:
    normalize_advantages; GRPO: scale_rewards="group", its default): a preference model's scores
    have an arbitrary scale, and without this the update size would follow it.
    """
    if spec.algorithm == "rloo":
        from trl import RLOOConfig as Config

        algo: dict[str, Any] = {"normalize_advantages": True}
    elif spec.algorithm == "grpo":
        from trl import GRPOConfig as Config

        algo = {"scale_rewards": "group"}
    else:
        raise StageError(f"spec.algorithm: {spec.algorithm!r} is not rloo or grpo")
    return Config(
        **common,
        **algo,
        max_steps=spec.steps,
        learning_rate=spec.learning_rate,
        per_device_train_batch_size=spec.batch_size * spec.generations_per_prompt,
        gradient_accumulation_steps=1,
        num_generations=spec.generations_per_prompt,
        max_completion_length=spec.max_new_tokens,
        temperature=spec.temperature,
        beta=spec.kl_coef,
        disable_dropout=True,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(10, spec.steps // 10),
        remove_unused_columns=False,
    )


def build_trainer(spec: RLAIFRunSpec, policy: Any, reward_funcs: Any, tokenizer: Any, reward_tokenizer: Any,
                  prompts: list[dict[str, Any]], common: dict[str, Any], callbacks: list[Any]) -> Any:
    """The TRL trainer for `spec` on chat prompts; `reward_funcs` is the preference model here (tests
    pass a programmatic reward to check that the configured algorithm raises a known reward)."""
    import datasets

    if spec.algorithm == "rloo":
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOTrainer as Trainer
    chats = [{"prompt": [{"role": "user", "content": p["prompt"]}]} for p in prompts]
    train = datasets.Dataset.from_list(chats)
    return Trainer(
        model=policy,
        reward_funcs=reward_funcs,
        args=trainer_config(spec, common),
        train_dataset=train,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer,
        callbacks=callbacks,
    )


def run(ctx: StageContext[RLAIFRunSpec]) -> StageResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    spec = ctx.spec
    ds_config = deepspeed_config(spec.deepspeed, "spec.deepspeed")
    try:
        prompts = load_prompts(spec.prompts.source, spec.prompts.limit, spec.prompts.split)
    except PromptSourceError as e:
        raise StageError(f"spec.prompts.source: {e}") from None
    policy_ref, reward_ref = ctx.model("policy"), ctx.model("reward")
    policy_dir, reward_dir = resolve_model(policy_ref), resolve_model(reward_ref)
    tokenizer, reward_tokenizer = load_tokenizer(policy_dir), load_tokenizer(reward_dir)
    problem = vocabulary_problem(reward_ref, reward_tokenizer, policy_ref, tokenizer, "preference model")
    if problem:
        raise StageError(problem)
    if not tokenizer.chat_template:
        raise StageError(f"policy {policy_ref} has no chat template; RL prompts are chat conversations")
    ctx.log(
        f"{spec.algorithm.upper()}: {spec.steps} steps × {spec.batch_size} prompts × "
        f"{spec.generations_per_prompt} "
        f"generations, beta={spec.kl_coef}, {len(prompts)} prompts, policy {policy_ref}"
    )

    dtype = torch.float32 if not torch.cuda.is_available() else "auto"
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=dtype)
    reward_model.config.pad_token_id = reward_tokenizer.pad_token_id
    reward_model.eval()

    checkpoints = ctx.work_dir / "checkpoints"
    log_path = ctx.work_dir / "rl_log.jsonl"
    guard, logger = nan_guard(), rl_log_callback(log_path, ctx.log)
    trainer = build_trainer(
        spec,
        policy,
        reward_model,
        tokenizer,
        reward_tokenizer,
        prompts,
        common_args(checkpoints, spec.seed, ds_config),
        callbacks=[guard, logger, keep_checkpoints(ctx, checkpoints, log_path)],
    )
    logger.trainer = trainer
    resume = last_checkpoint(checkpoints)
    if resume:
        ctx.log(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    raise_if_nan(guard, checkpoints)

    entries = read_rl_log(log_path)
    reward_mean, kl = _tail_mean(entries, "reward"), _tail_mean(entries, "kl")
    if is_main_process():
        trainer.model.save_pretrained(ctx.out_dir, safe_serialization=True)
        tokenizer.save_pretrained(ctx.out_dir)
        with open(ctx.out_dir / "rl_log.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
        (ctx.out_dir / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        write_model_card(
            ctx.out_dir,
            title="RL-CAI policy",
            base_model=policy_ref,
            stage="train-policy",
            details={
                "algorithm": spec.algorithm,
                "preference model": reward_ref,
                "KL coefficient": spec.kl_coef,
                "steps": trainer.state.global_step,
                "generations per prompt": spec.generations_per_prompt,
                "learning rate": spec.learning_rate,
                "reward (last quarter)": f"{reward_mean:.4f}" if reward_mean is not None else "n/a",
                "KL (last quarter)": f"{kl:.4f}" if kl is not None else "n/a",
            },
        )
    metrics: dict[str, Any] = {
        "algorithm": spec.algorithm,
        "steps": trainer.state.global_step,
        "rewardMean": reward_mean,
        "rewardFirst": _tail_mean(entries, "reward", head=True),
        "kl": kl,
        "completionLength": _tail_mean(entries, "completionLength"),
    }
    return StageResult(
        kind="model",
        metrics={k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items() if v is not None},
    )
