"""Status transitions shared by the local runner and the operator, so both write the same conditions.

Summary condition (Ready or Succeeded): Unknown while waiting or running, True when every stage
finished, False on failure. Per-stage conditions (CritiquesGenerated, ...) become True as stages
finish. Reasons are CamelCase: WaitingForDependency, DependencyFailed, JobRunning, StageRunning,
StageSucceeded, StageFailed, BackoffLimitExceeded, Suspended, Succeeded, InvalidSpec.
"""

from __future__ import annotations

import re
from typing import Any

from ..api.common import StageStatus, now_rfc3339
from ..api.kinds import ConstitutionStatus, KindInfo, PrincipleCounts, StageInfo
from .conditions import set_condition
from .plan import STAGE_OUTPUTS, Blocked, constitution_digest, published_output


def _camel(stage: str) -> str:
    head, *rest = stage.split("-")
    return head + "".join(p.capitalize() for p in rest)


def status_metrics(stage: str, manifest_metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric manifest metrics as status.metrics entries (durations named per stage)."""
    out: dict[str, float] = {}
    for key, value in manifest_metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"{_camel(stage)}Seconds" if key == "durationSeconds" else key] = float(value)
    return out


def stage_entry(status, stage: str) -> StageStatus:
    entry = next((s for s in status.stages if s.name == stage), None)
    if entry is None:
        entry = StageStatus(name=stage)
        status.stages = [*status.stages, entry]
    return entry


def mark_blocked(info: KindInfo, status, blocked: Blocked, generation: int) -> None:
    value = "False" if blocked.failed else "Unknown"
    set_condition(status, info.summary_condition, value, blocked.reason, blocked.message, generation)


def mark_invalid(info: KindInfo, status, message: str, generation: int) -> None:
    set_condition(status, info.summary_condition, "False", "InvalidSpec", message, generation)


def mark_stage_started(info: KindInfo, status, stage: StageInfo, generation: int, job_name: str | None = None,
                       reason: str = "StageRunning") -> None:
    entry = stage_entry(status, stage.name)
    entry.attempts += 1
    entry.start_time = now_rfc3339()
    entry.completion_time = None
    entry.job_name = job_name
    set_condition(status, stage.condition, "Unknown", reason, f"stage {stage.name} is running", generation)
    set_condition(status, info.summary_condition, "Unknown", reason, f"running stage {stage.name}", generation)


def mark_stage_succeeded(info: KindInfo, status, stage: StageInfo, output_uri: str, metrics: dict[str, Any],
                         generation: int) -> None:
    entry = stage_entry(status, stage.name)
    entry.completion_time = entry.completion_time or now_rfc3339()
    setattr(status.outputs, _output_attr(stage.name), published_output(stage.name, output_uri))
    status.metrics = {**status.metrics, **status_metrics(stage.name, metrics)}
    set_condition(status, stage.condition, "True", "StageSucceeded", f"wrote {output_uri}", generation)


def mark_stage_failed(info: KindInfo, status, stage: StageInfo, reason: str, message: str, generation: int) -> None:
    set_condition(status, stage.condition, "False", reason, message, generation)
    set_condition(status, info.summary_condition, "False", reason, f"stage {stage.name} failed: {message}", generation)


def mark_completed(info: KindInfo, status, generation: int) -> None:
    reason = "Succeeded" if info.summary_condition == "Succeeded" else "Ready"
    set_condition(status, info.summary_condition, "True", reason, "all stages finished", generation)
    status.observed_generation = generation


def _output_attr(stage: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), STAGE_OUTPUTS[stage])


def constitution_status(res) -> ConstitutionStatus:
    status = ConstitutionStatus(
        digest=constitution_digest(res.spec),
        principles=PrincipleCounts(
            critique_revision=len(res.spec.critique_revision_principles),
            preference=len(res.spec.preference_principles),
        ),
        observed_generation=res.generation,
    )
    set_condition(status, "Ready", "True", "Validated", "constitution is valid", res.generation)
    return status
