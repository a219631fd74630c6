"""The state machine of a resource's status, shared by the operator and the local runner: every
condition either runner writes is written here, so both write the same conditions (docs/design.md,
"Status").

A run's summary condition (Ready for PreferenceModel, Succeeded for the other run kinds) moves
through these states, named by (status, reason):

    Unknown/WaitingForDependency   a referenced object is missing or not ready yet
    Unknown/StorageNotConfigured   no artifact storage for the run's namespace
    Unknown/Suspended              spec.suspend is true (before a stage, or with its Job suspended)
    Unknown/JobQueued              a stage's Job waits for Kueue admission
    Unknown/FailedCreate           the apiserver refused a child object (403: quota, admission, RBAC);
                                   the operator tries again
    Unknown/JobRunning             a stage's Job runs (operator); StageRunning (local runner)
    Unknown/PodsNotStarted         no pod of the stage's Job has started within the operator's timeout
    Unknown/ArtifactUnreadable     the Job completed; the operator cannot read the store to check it
    True/Succeeded or True/Ready   every stage finished (terminal)
    False/<reason>                 DependencyFailed, InvalidSpec, StageFailed, ArtifactMissing,
                                   BackoffLimitExceeded, DeadlineExceeded, Interrupted, ... (terminal)

Each stage has its own condition (CritiquesGenerated, ...): Unknown while its Job runs, True with
StageSucceeded, False with the failure's reason. `ConstitutionChanged` notes (never acts on) a
Constitution edited or deleted after the run started. A Constitution itself is Ready/Validated or
False/InvalidSpec. Pure: the only impurity is the wall clock of transition times.
"""

from __future__ import annotations

from typing import Any

from ..api.base import ApiModel
from ..api.common import ConditionStatus, ObjectStatus, StageStatus, now_rfc3339
from ..api.kinds import ConstitutionSpec, ConstitutionStatus, KindInfo, PrincipleCounts, RunStatus, StageInfo
from ..api.manifest import Resource
from .conditions import get_condition, set_condition
from .plan import Blocked, constitution_digest, published_output

CONSTITUTION_CHANGED = "ConstitutionChanged"
# A stage's process ended well but its artifact is missing or was written for another plan (terminal).
ARTIFACT_MISSING = "ArtifactMissing"
# Its Job completed but the operator cannot read the store to check the artifact (it looks again later).
ARTIFACT_UNREADABLE = "ArtifactUnreadable"
# The apiserver refused to create a child (403); no pod of a stage's Job started in time.
FAILED_CREATE, PODS_NOT_STARTED = "FailedCreate", "PodsNotStarted"
# Reasons of a summary condition that is Unknown because the run waits, not because it works.
WAITING_REASONS = ("WaitingForDependency", "StorageNotConfigured", FAILED_CREATE, PODS_NOT_STARTED)
# Unknown states that need someone's attention: their events are Warnings.
WARNING_REASONS = (FAILED_CREATE, PODS_NOT_STARTED, ARTIFACT_UNREADABLE)


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


def is_terminal(info: KindInfo, status: ObjectStatus | None) -> bool:
    """True once the summary condition is True or False: a finished run never changes again."""
    c = get_condition(status, info.summary_condition)
    return c is not None and c.status in ("True", "False")


def state_word(info: KindInfo, summary: tuple[str, str] | None) -> str:
    """One word for the `cai_runs` gauge from the summary condition's (status, reason): Succeeded/Ready,
    Failed, Running, Queued, Waiting, Suspended or Pending."""
    if summary is None:
        return "Pending"
    value, reason = summary
    if value == "True":
        return info.summary_condition
    if value == "False":
        return "Failed"
    if reason in WAITING_REASONS:
        return "Waiting"
    if reason == "Suspended":
        return "Suspended"
    if reason == "JobQueued":
        return "Queued"
    return "Running"


class RunState:
    """The status of one run and the transitions a runner makes on it (see the module docstring)."""

    def __init__(self, info: KindInfo, status: RunStatus, generation: int) -> None:
        self.info, self.status, self.generation = info, status, generation

    def _summary(self, value: ConditionStatus, reason: str, message: str) -> None:
        set_condition(self.status, self.info.summary_condition, value, reason, message, self.generation)

    def _stage(self, stage: StageInfo, value: ConditionStatus, reason: str, message: str) -> None:
        set_condition(self.status, stage.condition, value, reason, message, self.generation)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.info, self.status)

    def entry(self, stage: str) -> StageStatus:
        """The stage's entry in status.stages, added when missing."""
        found = next((s for s in self.status.stages if s.name == stage), None)
        if found is None:
            found = StageStatus(name=stage)
            self.status.stages = [*self.status.stages, found]
        return found

    # ---- before the first stage

    def blocked(self, blocked: Blocked) -> None:
        self._summary("False" if blocked.failed else "Unknown", blocked.reason, blocked.message)

    def invalid(self, message: str) -> None:
        self._summary("False", "InvalidSpec", message)

    def storage_missing(self, message: str) -> None:
        self._summary("Unknown", "StorageNotConfigured", message)

    def suspended(self, message: str) -> None:
        self._summary("Unknown", "Suspended", message)

    # ---- stages

    def stage_started(
        self, stage: StageInfo, job_name: str | None = None, reason: str = "StageRunning"
    ) -> StageStatus:
        """A new attempt of `stage` (its Job created or adopted, or its local process started)."""
        entry = self.entry(stage.name)
        entry.attempts += 1
        entry.start_time = now_rfc3339()
        entry.completion_time = None
        entry.job_name = job_name
        self._stage(stage, "Unknown", reason, f"stage {stage.name} is running")
        self._summary("Unknown", reason, f"running stage {stage.name}")
        return entry

    def create_refused(self, stage: StageInfo | None, message: str) -> None:
        """The apiserver refused what the run (None: before its first stage) or a stage needs created."""
        if stage is not None:
            self._stage(stage, "Unknown", FAILED_CREATE, message)
        self._summary("Unknown", FAILED_CREATE, message)

    def stage_waiting(self, stage: StageInfo, reason: str, message: str) -> None:
        """The stage's Job exists and has not finished: JobRunning, JobQueued, Suspended, PodsNotStarted
        or ArtifactUnreadable."""
        self._stage(stage, "Unknown", reason, message)
        self._summary("Unknown", reason, f"stage {stage.name}: {message}")

    def stage_succeeded(self, stage: StageInfo, output_uri: str, metrics: dict[str, Any]) -> None:
        entry = self.entry(stage.name)
        entry.completion_time = entry.completion_time or now_rfc3339()
        outputs: ApiModel = getattr(self.status, "outputs")  # noqa: B009 — each kind's RunStatus has its own
        setattr(outputs, stage.output, published_output(stage, output_uri))
        self.status.metrics = {**self.status.metrics, **status_metrics(stage.name, metrics)}
        self._stage(stage, "True", "StageSucceeded", f"wrote {output_uri}")

    def stage_failed(self, stage: StageInfo, reason: str, message: str) -> None:
        self._stage(stage, "False", reason, message)
        self._summary("False", reason, f"stage {stage.name} failed: {message}")

    def completed(self) -> None:
        reason = "Succeeded" if self.info.summary_condition == "Succeeded" else "Ready"
        self._summary("True", reason, "all stages finished")
        self.status.observed_generation = self.generation

    # ---- the Constitution the run started with

    def constitution_unchanged(self, message: str) -> None:
        """Clear an earlier ConstitutionChanged note (never set one: most runs have none)."""
        if get_condition(self.status, CONSTITUTION_CHANGED) is not None:
            set_condition(
                self.status, CONSTITUTION_CHANGED, "False", "ConstitutionUnchanged", message, self.generation
            )

    def constitution_changed(self, reason: str, message: str) -> None:
        set_condition(self.status, CONSTITUTION_CHANGED, "True", reason, message, self.generation)


def constitution_status(res: Resource[ConstitutionSpec, Any]) -> ConstitutionStatus:
    """A valid Constitution's status: Ready, its digest and principle counts."""
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


def constitution_invalid(status: ConstitutionStatus, message: str, generation: int) -> None:
    status.observed_generation = generation
    set_condition(status, "Ready", "False", "InvalidSpec", message, generation)
