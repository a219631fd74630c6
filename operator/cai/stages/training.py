"""What every trainer stage shares: device and precision, DeepSpeed configs, checkpoint resume,
a NaN guard, distributed rank handling and the model card.

DeepSpeed and bf16 are GPU paths: on CPU the same code runs in fp32 (DeepSpeed on CPU works for
tests: docs/design.md#models-and-backends). Multi-node runs start this stage under torchrun; only rank
0 publishes artifacts.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..store import filesystem
from .runtime import StageContext, StageError

# Steps between trainer checkpoints (CAI_CHECKPOINT_STEPS overrides): what a new pod of a training stage
# can lose at most. Each checkpoint of a remote-output stage is also uploaded (StageContext.keep).
CHECKPOINT_STEPS = 50

DEEPSPEED_PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    },
    "zero3": {
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
    },
}


def deepspeed_config(value: str | None, field: str) -> dict[str, Any] | None:
    """A DeepSpeed config from a preset name, inline JSON, or a path/URI of a JSON file."""
    if not value:
        return None
    if value in DEEPSPEED_PRESETS:
        return json.loads(json.dumps(DEEPSPEED_PRESETS[value]))
    text = value.strip()
    if not text.startswith("{"):
        fs, path = filesystem(value)
        try:
            with fs.open(path, "r") as f:
                text = f.read()
        except FileNotFoundError:
            raise StageError(f"{field}: DeepSpeed config {value!r} not found (expected a preset "
                             f"{', '.join(DEEPSPEED_PRESETS)}, inline JSON, or a path/URI)") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise StageError(f"{field}: expected a JSON object for the DeepSpeed config ({e})") from None
    if not isinstance(config, dict):
        raise StageError(f"{field}: expected a JSON object for the DeepSpeed config")
    return config


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def device_kwargs() -> dict[str, Any]:
    """TrainingArguments for this machine: bf16 on GPUs that support it, plain fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "use_cpu": False}
    return {"bf16": False, "fp16": False, "use_cpu": True}


def common_args(output_dir: Path, seed: int, deepspeed: dict[str, Any] | None) -> dict[str, Any]:
    """Arguments shared by the SFT, reward and RL trainers' configs."""
    args: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": seed,
        "report_to": [],
        "logging_steps": 1,
        # transformers replaces a NaN/inf step loss by the running average before logging it by
        # default, which would hide a NaN from `nan_guard`.
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": checkpoint_steps(),
        "save_total_limit": 2,
        "save_only_model": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **device_kwargs(),
    }
    if deepspeed is not None:
        args["deepspeed"] = deepspeed
    return args


def checkpoint_steps() -> int:
    value = os.environ.get("CAI_CHECKPOINT_STEPS", str(CHECKPOINT_STEPS))
    if not value.isdigit() or int(value) < 1:
        raise StageError(f"CAI_CHECKPOINT_STEPS: expected a positive number of steps, got {value!r}")
    return int(value)


def keep_checkpoints(ctx: StageContext[Any], checkpoint_dir: Path, *files: Path):
    """A callback that keeps each checkpoint the trainer saves beyond this pod (ctx.keep; every rank
    its own part), with `files` of the work dir the stage appends to (rank 0), and forgets rotated ones."""
    from transformers import TrainerCallback

    class KeepCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saved = checkpoint_dir / f"checkpoint-{state.global_step}"
            if saved.is_dir():
                ctx.keep(saved)
            if is_main_process():
                for f in files:
                    if f.is_file():
                        ctx.keep(f)
                ctx.forget_rotated(checkpoint_dir)
            return control

    return KeepCheckpoints()


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint to resume from, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    if not checkpoint_dir.is_dir():
        return None
    return get_last_checkpoint(str(checkpoint_dir))


def step_progress(ctx: Any, task: str = "train"):
    """A callback reporting optimizer steps as our progress (bars in `cai run`, periodic lines in pods):
    the trainers' own step dicts go to the stage's log file, so this is what the terminal shows."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        reporter: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.max_steps:
                self.reporter = ctx.progress(task, state.max_steps, "steps")
                self.reporter.update(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.reporter is not None:
                self.reporter.update(state.global_step)

    return StepProgress()


def nan_guard():
    """A callback that stops training when the loss stops being finite (the last good checkpoint stays)."""
    from transformers import TrainerCallback

    class NanGuard(TrainerCallback):
        bad_step: int | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                self.bad_step = state.global_step
                control.should_training_stop = True
                control.should_save = False
            return control

    return NanGuard()


def raise_if_nan(guard, checkpoint_dir: Path) -> None:
    if guard.bad_step is not None:
        kept = last_checkpoint(checkpoint_dir)
        raise StageError(
            f"training loss became NaN/inf at step {guard.bad_step}; stopped. "
            + (f"Last good checkpoint kept at {kept}. " if kept else "")
            + "Lower the learning rate or check the data."
        )


def loss_curve(log_history: list[dict[str, Any]], key: str = "loss") -> list[dict[str, float]]:
    return [{"step": h["step"], key: h[key]} for h in log_history if key in h and "step" in h]


def write_model_card(
    out_dir: Path, *, title: str, base_model: str, stage: str, details: dict[str, Any]
) -> None:
    lines = [
        "---",
        "library_name: transformers",
        "tags: [constitutional-ai, cai-operator]",
        "---",
        f"# {title}",
        "",
        f"Trained by cai-operator stage `{stage}` from `{base_model}`.",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in details.items()),
        "",
        "Method: Constitutional AI (Bai et al. 2022, arXiv 2212.08073).",
    ]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
