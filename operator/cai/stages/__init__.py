"""Stages: one module per stage, each exposing `run(ctx: StageContext) -> StageResult`.

Which module runs which stage is declared in the stage registry (`cai.api.kinds.KINDS`, field
`StageInfo.module`). Stage modules are leaves: they use the libraries (`cai.feedback`, `cai.models`,
`cai.store`, ...) and the two support modules here, `runtime` (what `cai stage` calls: spec,
resume, artifact publication) and `training` (what the trainer stages share), never each other.
Heavy ML imports (torch, transformers, trl) happen inside the stage modules, when their stage runs.
"""
