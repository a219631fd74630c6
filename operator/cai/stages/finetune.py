"""Stage `finetune` (SL-CAI, docs/design.md#stages): TRL SFTTrainer on the revisions + helpful samples.

Data are conversational prompt/completion pairs, so the loss covers only the assistant's answer and
the model's own chat template formats them. Optional LoRA (merged before saving), DeepSpeed config
passthrough (GPU path), checkpoints in the work dir for resume, a NaN guard. Saves a Hugging Face
model directory with a model card.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..api.kinds import CritiqueRunSpec
from ..models.resolve import resolve_model
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


def load_sft_rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        messages = row.get("messages") or []
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise StageError(
                f"{path.name} line {i + 1}: expected chat messages ending with an assistant turn"
            )
        rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    if not rows:
        raise StageError(f"{path.name} has no training rows")
    return rows


def lora_config(lora):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def run(ctx: StageContext[CritiqueRunSpec]) -> StageResult:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    spec = ctx.spec
    ft = spec.finetune
    ds_config = deepspeed_config(ft.deepspeed, "spec.finetune.deepspeed")
    rows = load_sft_rows(ctx.input_dir("dataset") / "sft.jsonl")
    base_ref = ctx.model("base")
    model_dir = resolve_model(base_ref)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise StageError(f"model {base_ref} has no chat template; SFT on chat data needs one")
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32 if not torch.cuda.is_available() else "auto"
    )

    checkpoints = ctx.work_dir / "checkpoints"
    config = SFTConfig(
        **common_args(checkpoints, spec.seed, ds_config),
        num_train_epochs=ft.epochs,
        learning_rate=ft.learning_rate,
        per_device_train_batch_size=ft.batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation_steps,
        max_length=ft.max_length,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,  # a float below 1 is a ratio of total steps
        completion_only_loss=True,
    )
    guard = nan_guard()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(ft.lora) if ft.lora else None,
        callbacks=[guard, keep_checkpoints(ctx, checkpoints), step_progress(ctx, "fine-tune")],
    )
    resume = last_checkpoint(checkpoints)
    if resume:
        ctx.log(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    raise_if_nan(guard, checkpoints)

    curve = loss_curve(trainer.state.log_history)
    if is_main_process():
        trained = trainer.model
        if ft.lora:
            trained = trained.merge_and_unload()
        trained.save_pretrained(ctx.out_dir, safe_serialization=True)
        tokenizer.save_pretrained(ctx.out_dir)
        (ctx.out_dir / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        write_model_card(ctx.out_dir, title="SL-CAI model", base_model=base_ref, stage="finetune", details={
            "rows": len(rows), "epochs": ft.epochs, "learning rate": ft.learning_rate, "LoRA": bool(ft.lora),
            "final loss": f"{curve[-1]['loss']:.4f}" if curve else "n/a",
        })
    return StageResult(kind="model", metrics={
        "trainRows": len(rows),
        "trainSteps": trainer.state.global_step,
        "trainLoss": round(float(result.training_loss), 6),
        "finalLoss": curve[-1]["loss"] if curve else float("nan"),
        "firstLoss": curve[0]["loss"] if curve else float("nan"),
    })
