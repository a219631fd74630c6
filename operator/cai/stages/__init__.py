"""Stages: one module per stage, each exposing `run(ctx: StageContext) -> StageResult`.

This is the only package that imports torch/transformers/trl (inside the stage modules, which are
imported only when their stage runs). `runtime.run_stage` is what `cai stage` calls.
"""

STAGE_MODULES = {
    "generate-revisions": "cai.stages.generate_revisions",
    "finetune": "cai.stages.finetune",
    "sample-pairs": "cai.stages.sample_pairs",
    "label-preferences": "cai.stages.label_preferences",
    "train-preference-model": "cai.stages.train_preference_model",
    "train-policy": "cai.stages.train_policy",
    "evaluate": "cai.stages.evaluate",
}
