"""Pure reconcile: (typed resource, observed children) → Outcome, or the `Need` for more observations.

Where it sits: `controller` calls `reconcile_run` with what it knows (the run, its Jobs from the kopf
index, a `lookup` over the indexes of the four kinds); when the answer is a `Need` (a manifest, the
frozen plan, pods' termination messages, the namespace's storage ConfigMap) it fetches exactly that and
calls again. The `Outcome` lists objects to create, Job patches, the new status, events and metric
samples. No I/O here; the only impurity is the wall clock inside the shared status transitions.

Level-triggered: the decision depends only on the spec, the status written so far and the Jobs that
exist now, so replaying it after a restart or a missed event converges to the same state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.common import now_rfc3339
from ..api.kinds import (
    STAGES,
    ConstitutionSpec,
    ConstitutionStatus,
    CritiqueRunSpec,
    KindInfo,
    PreferenceModelSpec,
    PreferenceModelStatus,
    RLAIFRunSpec,
    RunCommon,
    RunStatus,
    StageInfo,
)
from ..api.manifest import Resource, RunResource
from ..pipeline.conditions import get_condition, is_true
from ..pipeline.plan import (
    PLAN_SPECS_LIMIT,
    Blocked,
    constitution_digest,
    model_refs,
    plan_resource,
    prompt_sources,
    references,
)
from ..pipeline.podpolicy import describe, pod_problems
from ..pipeline.runstate import (
    ARTIFACT_MISSING,
    ARTIFACT_UNREADABLE,
    CONSTITUTION_CHANGED,
    PODS_NOT_STARTED,
    WARNING_REASONS,
    RunState,
    constitution_invalid,
    constitution_status,
    is_terminal,
)
from ..pipeline.stagespec import StageSpec
from .builders import (
    build_configmap,
    build_job,
    build_service,
    configmap_name,
    data_parallel,
    distributed,
    job_name,
    service_name,
)
from .config import OperatorConfig
from .merge import MergeError
from .observed import EventSpec, FrozenPlan, JobObs, Need, Observation, Observed, Outcome, Storage
from .storage import Refused, resolve_storage

Lookup = Callable[[str, str], Resource | None]

WAITING_RECHECK_SECONDS = 30.0  # dependency pokes usually come first; this is the safety net
CREATE_GRACE_SECONDS = 10.0  # a Job created this recently may simply not be in the watch cache yet
CONFIGMAP_LIMIT = PLAN_SPECS_LIMIT  # bytes of stage specs; a ConfigMap holds at most 1 MiB


@dataclass(frozen=True)
class Context:
    config: OperatorConfig
    lookup: Lookup


# ------------------------------------------------------------------------------------------ helpers


def _epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


def pod_policy_problems(res: RunResource, config: OperatorConfig) -> list[str]:
    """What the pod policy refuses in the run's serviceAccountName and podTemplate (field-named)."""
    r = res.spec.resources
    return describe(pod_problems(r.service_account_name, r.pod_template,
                                 config.pod_policy.for_namespace(res.namespace)))


def spec_problems(res: Resource, config: OperatorConfig) -> list[str]:
    """Field-named problems the apiserver cannot see: model references, builtin prompt sets, and what the
    pod policy refuses.

    (Schema and CEL-rule problems come from `parse_resource`, which the controller runs first.)
    """
    from ..data.prompts import check_source
    from ..models.refs import check_model_ref
    problems: list[str] = []
    if res.info.is_run:
        problems += pod_policy_problems(res.typed(RunCommon, RunStatus), config)
    for path, ref in model_refs(res):
        issue = check_model_ref(ref, local=False)  # syntax only: paths refer to the pod's filesystem
        if issue:
            problems.append(f"{path}: {issue}")
    for path, source in prompt_sources(res):
        if source.startswith(("builtin:", "hf:")):  # files are checked by the stage that reads them
            issue = check_source(source)
            if issue:
                problems.append(f"{path}: {issue}")
    return problems


def constitution_name(res: Resource, lookup: Lookup) -> str | None:
    spec = res.spec
    if isinstance(spec, (CritiqueRunSpec, PreferenceModelSpec)):
        return spec.constitution_ref.name
    if isinstance(spec, RLAIFRunSpec):
        pm = lookup("PreferenceModel", spec.reward_model_ref.name)
        return (
            pm.typed(PreferenceModelSpec, PreferenceModelStatus).spec.constitution_ref.name
            if pm is not None
            else None
        )
    return None


def _current_digest(lookup: Lookup, name: str) -> str | None:
    const = lookup("Constitution", name)
    # From the spec, not status.digest: the spec in the index is already the edited one when the
    # Constitution's own reconcile pokes this run, its status write may not have arrived yet.
    return (
        constitution_digest(const.typed(ConstitutionSpec, ConstitutionStatus).spec)
        if const is not None
        else None
    )


# --------------------------------------------------------------------------------------- events


def _ctuple(status: Any, type_: str) -> tuple[str, str, str] | None:
    c = get_condition(status, type_)
    return (c.status, c.reason, c.message) if c else None


def transition_events(info: KindInfo, old: Any, new: Any) -> list[EventSpec]:
    """One event per transition: summary condition changes, stage conditions reaching True/False,
    and the constitution-changed note. Derived from the status diff, so replays never repeat them."""
    events: list[EventSpec] = []
    for stage in info.stages:
        before, after = _ctuple(old, stage.condition), _ctuple(new, stage.condition)
        if after and after[0] != "Unknown" and (before is None or before[:2] != after[:2]):
            kind = "Normal" if after[0] == "True" else "Warning"
            verb = "succeeded" if after[0] == "True" else "failed"
            events.append(EventSpec(kind, after[1], f"Stage {stage.name} {verb}: {after[2]}"))
    before, after = _ctuple(old, CONSTITUTION_CHANGED), _ctuple(new, CONSTITUTION_CHANGED)
    if after and after[0] == "True" and (before is None or before[:2] != after[:2]):
        events.append(EventSpec("Warning", after[1], after[2]))
    before, after = _ctuple(old, info.summary_condition), _ctuple(new, info.summary_condition)
    if after and before != after:
        kind = "Warning" if after[0] == "False" or after[1] in WARNING_REASONS else "Normal"
        events.append(EventSpec(kind, after[1], after[2]))
    return events


# --------------------------------------------------------------------------------------- constitution


def reconcile_constitution(res: Resource, problems: list[str]) -> Outcome:
    """Constitution: validated; status.digest, principle counts, Ready."""
    const = res.typed(ConstitutionSpec, ConstitutionStatus)
    old = const.status if const.status is not None else ConstitutionStatus()
    if problems:
        status = old.model_copy(deep=True)
        constitution_invalid(status, "; ".join(problems), res.generation)
    else:
        status = constitution_status(const)
        # Keep the transition time of an unchanged Ready condition.
        prev, cur = get_condition(old, "Ready"), get_condition(status, "Ready")
        if prev is not None and cur is not None and prev.status == cur.status:
            cur.last_transition_time = prev.last_transition_time
    out = Outcome(status=status, events=_constitution_events(old, status))
    out.poke_dependents = old.digest != status.digest or _ctuple(old, "Ready") != _ctuple(status, "Ready")
    return out


def _constitution_events(old: Any, new: Any) -> list[EventSpec]:
    before, after = _ctuple(old, "Ready"), _ctuple(new, "Ready")
    events = []
    if after and before != after:
        events.append(EventSpec("Normal" if after[0] == "True" else "Warning", after[1], after[2]))
    if old.digest and new.digest and old.digest != new.digest:
        events.append(
            EventSpec(
                "Normal",
                "DigestChanged",
                f"spec changed: digest {new.digest}; runs already started keep the version they started with",
            )
        )
    return events


# --------------------------------------------------------------------------------------------- runs


def invalid_outcome(info: KindInfo, status: RunStatus, generation: int, problems: list[str]) -> Outcome:
    """InvalidSpec: summary False with the field-named problems; terminal (specs are immutable)."""
    old = status.model_copy(deep=True)
    status.observed_generation = generation
    RunState(info, status, generation).invalid("; ".join(problems)[:4000])
    out = Outcome(status=status, events=transition_events(info, old, status), terminal=True)
    out.poke_dependents = _ctuple(old, info.summary_condition) != _ctuple(status, info.summary_condition)
    return out


def _attempts(res: RunResource, job: JobObs) -> int:
    pods = job.failed + job.succeeded + job.active
    r = res.spec.resources
    per = r.nodes if distributed(res, job.stage) else r.workers if data_parallel(res, job.stage) else 1
    return max(1, math.ceil(pods / per))


class _Stop:
    """A stage step's answer: stop walking the stages (the run waits, or something ended it)."""


STOP = _Stop()
Step = _Stop | Need | None  # None: this stage is done, go on to the next


class _RunReconcile:
    """One reconcile of one run: the status so far, the Jobs that exist, the frozen plan → Outcome.

    `reconcile` is the dispatch; each method below is one situation, and every condition it sets goes
    through the run's `RunState` (pipeline/runstate.py), the state machine the local runner shares.
    """

    def __init__(self, res: RunResource, obs: Observed, ctx: Context) -> None:
        self.res, self.obs, self.ctx = res, obs, ctx
        self.info, self.gen = res.info, res.generation
        fresh = res.info.status()
        assert isinstance(fresh, RunStatus)
        self.old: RunStatus = res.status if res.status is not None else fresh
        self.status = self.old.model_copy(deep=True)
        self.status.observed_generation = self.gen
        self.state = RunState(self.info, self.status, self.gen)
        self.out = Outcome(status=self.status)
        self.plan: FrozenPlan | None = obs.plan if isinstance(obs.plan, FrozenPlan) else None

    def reconcile(self) -> Outcome | Need:
        if is_terminal(self.info, self.old):
            return (
                self.finish()
            )  # finished runs never change, not even when their Constitution is edited later
        status = self.status
        if not (self.obs.jobs or status.stages or status.constitution_digest is not None):
            if self.obs.problems:
                return invalid_outcome(self.info, status, self.gen, self.obs.problems)
            first = self.start()
            if first is not None:
                return first if isinstance(first, Need) else self.finish()
        self.note_constitution()
        names = list(self.plan.stages) if self.plan else [s.name for s in self.info.stages_for(self.res.spec)]
        for stage in names:
            step = self.step(STAGES[stage][1])
            if isinstance(step, Need):
                return step
            if step is STOP:
                break
        else:
            self.state.completed()
        return self.finish()

    def finish(self) -> Outcome:
        out, info = self.out, self.info
        out.events = transition_events(info, self.old, self.status) + out.events
        before, after = (
            _ctuple(self.old, info.summary_condition),
            _ctuple(self.status, info.summary_condition),
        )
        out.terminal = is_terminal(info, self.status)
        # Dependents only care about Ready/Succeeded becoming True or False.
        out.poke_dependents = out.terminal and (before or ("",))[0] != (after or ("",))[0]
        if out.terminal:
            out.requeue_after = None
        return out

    # ---- before the first stage

    def start(self) -> Need | _Stop | None:
        """Plan a run that has not started. None: planned (self.plan set); STOP: not now (status says why)."""
        planned = self.freeze()
        if not isinstance(planned, FrozenPlan):
            return planned
        if self.plan is None:
            if self.refused(None, configmap_name(self.res)):
                return STOP
            self.plan = planned
            self.out.creates.append(build_configmap(self.res, planned))
        # else: a ConfigMap from an attempt that crashed before writing status; it is the frozen plan.
        self.status.constitution_digest = self.plan.constitution_digest
        return None

    def freeze(self) -> FrozenPlan | Need | _Stop:
        """Storage, dependencies, stage specs: the plan this run will follow, or why there is none now."""
        res, obs, state = self.res, self.obs, self.state
        if obs.storage_configmap is None:  # also says what a spec.storage override may use
            return Need(storage_configmap=True)
        storage = resolve_storage(res, obs.storage_configmap, self.ctx.config)
        if isinstance(storage, Refused):
            state.invalid(storage.message)
            return STOP
        if not isinstance(storage, Storage):
            state.storage_missing(
                storage
                or (
                    "no artifact storage configured: set spec.storage, create ConfigMap cai-storage "
                    f"(key uri) in namespace {res.namespace}, or start the operator with CAI_STORAGE_URI"
                )
            )
            self.out.requeue_after = WAITING_RECHECK_SECONDS
            return STOP
        plan = plan_resource(res, self.ctx.lookup, storage.uri)
        if isinstance(plan, Blocked):
            state.blocked(plan)
            self.out.requeue_after = None if plan.failed else WAITING_RECHECK_SECONDS
            return STOP
        if res.spec.suspend:
            state.suspended("suspended before the first stage (spec.suspend is true)")
            return STOP
        specs = {s.stage: s.model_dump_json(by_alias=True) for s in plan.stages}
        size = sum(len(v) for v in specs.values())
        if size > CONFIGMAP_LIMIT:
            state.invalid(f"stage specs take {size} bytes, more than a ConfigMap holds ({CONFIGMAP_LIMIT}): "
                          "shorten the constitution (few-shot examples)")
            return STOP
        return FrozenPlan(
            stages=tuple(s.stage for s in plan.stages),
            outputs={s.stage: s.output for s in plan.stages},
            storage=storage,
            constitution_name=constitution_name(res, self.ctx.lookup),
            constitution_digest=plan.constitution_digest,
            specs=specs,
        )

    def note_constitution(self) -> None:
        """Surface (never act on) a Constitution edited or deleted after the run started."""
        recorded = self.status.constitution_digest
        name = constitution_name(self.res, self.ctx.lookup)
        if not recorded or not name:
            return
        current = _current_digest(self.ctx.lookup, name)
        if current == recorded:
            self.state.constitution_unchanged(
                f"Constitution/{name} matches the version this run started with"
            )
            return
        if current is None:
            reason, message = "ConstitutionDeleted", f"Constitution/{name} was deleted after this run started"
        else:
            reason, message = (
                "ConstitutionEdited",
                f"Constitution/{name} changed after this run started (now {current[:19]}…)",
            )
        self.state.constitution_changed(
            reason, f"{message}; the run keeps the version it started with ({recorded[:19]}…)"
        )

    # ---- one stage

    def step(self, stage: StageInfo) -> Step:
        if is_true(self.status, stage.condition):
            return None
        job = self.obs.jobs.get(stage.name)
        if job is None:
            return self.create(stage)
        self.adopt(stage, job)
        if job.complete:
            return self.succeeded(stage, job)
        if job.failed_reason:
            return self.failed(stage, job)
        return self.running(stage, job)

    def create(self, stage: StageInfo) -> Step:
        """No Job for the stage yet: create it (and its Service for distributed training)."""
        res, state, out = self.res, self.state, self.out
        queue = res.spec.resources.queue_name
        entry = next((s for s in self.status.stages if s.name == stage.name), None)
        name = job_name(res.name, stage.name)
        if res.spec.suspend:
            state.suspended(f"suspended before stage {stage.name} (spec.suspend is true)")
            return STOP
        created_at = (
            _epoch(entry.start_time)
            if entry and entry.job_name == name and not entry.completion_time
            else None
        )
        if created_at is not None and self.obs.now - created_at < CREATE_GRACE_SECONDS:
            out.requeue_after = max(1.0, CREATE_GRACE_SECONDS - (self.obs.now - created_at))
            return STOP
        if self.plan is None:
            if self.obs.plan is None:
                return Need(plan=True)
            # The ConfigMap is gone (deleted by hand): plan again from the current dependencies.
            replanned = self.freeze()
            if not isinstance(replanned, FrozenPlan):
                return replanned
            self.plan = replanned
            out.creates.append(build_configmap(res, replanned))
            out.events.append(
                EventSpec(
                    "Warning",
                    "PlanRecreated",
                    "the run's stage ConfigMap was missing; planned again from the current dependencies",
                )
            )
        # Checked at the start too; again here for runs an operator without the policy started.
        refused = pod_policy_problems(res, self.ctx.config)
        if refused:
            state.invalid("; ".join(refused))
            return STOP
        if self.refused(stage, name, service_name(name) if distributed(res, stage.name) else None):
            return STOP
        try:
            job_obj = build_job(res, stage.name, self.plan, self.ctx.config)
        except MergeError as e:  # resources.podTemplate cannot be merged into the pod
            state.invalid(f"spec.resources.podTemplate: {e}")
            return STOP
        if distributed(res, stage.name):
            out.creates.append(build_service(res, stage.name))
        out.creates.append(job_obj)
        reason = "JobQueued" if queue else "JobRunning"
        if entry is None or entry.job_name != name or entry.completion_time:
            state.stage_started(stage, job_name=name, reason=reason)
        state.stage_waiting(stage, reason, f"Job {name} waits for Kueue admission in queue {queue}" if queue
                            else f"Job {name} runs stage {stage.name}")
        out.requeue_after = CREATE_GRACE_SECONDS
        return STOP

    def refused(self, stage: StageInfo | None, *names: str | None) -> bool:
        """Whether the apiserver refused (403: quota, admission webhook, RBAC) one of the objects `names`
        in this reconcile: the run says so with the apiserver's message, and it is tried again later."""
        said = [f"{n}: {self.obs.refused[n]}" for n in names if n and n in self.obs.refused]
        if not said:
            return False
        self.state.create_refused(stage, f"the apiserver refused to create {'; '.join(said)}"[:4000])
        self.out.requeue_after = WAITING_RECHECK_SECONDS
        return True

    def adopt(self, stage: StageInfo, job: JobObs) -> None:
        """Record the stage's Job in status.stages (created before a restart, or by an attempt whose status
        write was lost) and its attempts so far."""
        entry = next((s for s in self.status.stages if s.name == stage.name), None)
        if entry is None or entry.job_name != job.name:
            entry = self.state.stage_started(stage, job_name=job.name, reason="JobRunning")
            entry.start_time = job.start_time or entry.start_time
        entry.attempts = max(entry.attempts, _attempts(self.res, job))

    def succeeded(self, stage: StageInfo, job: JobObs) -> Step:
        """The Job completed: the stage succeeds only if its artifact is the one planned (its manifest
        exists with the planned inputsDigest); then its manifest's figures become status metrics."""
        obs, out, res = self.obs, self.out, self.res
        if self.plan is None and obs.plan is None:
            return Need(plan=True)
        spec = self.stage_spec(stage.name)
        uri = job.output or (self.plan.outputs.get(stage.name) if self.plan else None) or ""
        wanted = [uri, *(spec.inputs.values() if spec else ())]
        unread = tuple(u for u in dict.fromkeys(wanted) if u and u not in obs.manifests)
        if unread:
            return Need(manifests=unread)
        unreadable = [f"{u}: {obs.manifests[u].error}" for u in wanted if u and obs.manifests[u].error]
        if unreadable:  # the operator's own access to the store: say so, and look again later
            self.state.stage_waiting(stage, ARTIFACT_UNREADABLE, "Job completed; cannot read its artifact to "
                                     f"check it: {'; '.join(unreadable)}"[:4000])
            out.requeue_after = WAITING_RECHECK_SECONDS
            return STOP
        manifest = obs.manifests[uri].manifest if uri else None
        if spec is not None:
            problem = spec.output_problem(manifest, {role: obs.manifests[u].digest if u else None
                                                     for role, u in spec.inputs.items()})
        else:  # the frozen plan is gone (deleted by hand): existence is all that can be checked
            problem = None if manifest is not None else f"stage {stage.name}: {uri}/manifest.json is missing"
        if problem:
            self.state.stage_failed(stage, ARTIFACT_MISSING, problem)
            out.observations.append(Observation(
                "stage_failure", (("kind", res.kind), ("stage", stage.name), ("reason", ARTIFACT_MISSING))))
            return STOP
        assert manifest is not None
        # JSON has no NaN/Infinity (the apiserver would refuse the status): leave such figures out.
        metrics = {k: v for k, v in (manifest.get("metrics") or {}).items()
                   if not (isinstance(v, float) and not math.isfinite(v))}
        self.state.stage_succeeded(stage, uri, metrics)
        entry = self.state.entry(stage.name)
        entry.completion_time = job.completion_time or entry.completion_time or now_rfc3339()
        labels = (("kind", res.kind), ("stage", stage.name))
        start, end = _epoch(job.start_time or entry.start_time), _epoch(entry.completion_time)
        if start is not None and end is not None:
            out.observations.append(Observation("stage_duration", labels, max(0.0, end - start)))
        tokens = metrics.get("tokensGenerated")
        if isinstance(tokens, (int, float)) and not isinstance(tokens, bool) and tokens > 0:
            out.observations.append(Observation("tokens", labels, float(tokens)))
        return None

    def stage_spec(self, stage: str) -> StageSpec | None:
        """The stage's frozen StageSpec (None when the plan ConfigMap is gone)."""
        plan = self.plan or (self.obs.plan if isinstance(self.obs.plan, FrozenPlan) else None)
        raw = plan.specs.get(stage) if plan else None
        return StageSpec.model_validate_json(raw) if raw else None

    def failed(self, stage: StageInfo, job: JobObs) -> Step:
        """The Job failed: the stage and the run fail, with what the pods said."""
        assert job.failed_reason is not None
        if job.name not in self.obs.pod_messages:
            return Need(pod_messages=(job.name,))
        detail = self.obs.pod_messages[job.name]
        message = job.failed_message or job.failed_reason
        if detail:
            message = f"{message}; pod said: {detail}"
        self.state.stage_failed(stage, job.failed_reason, message[:8000])
        self.out.observations.append(Observation(
            "stage_failure", (("kind", self.res.kind), ("stage", stage.name), ("reason", job.failed_reason))))
        return STOP

    def running(self, stage: StageInfo, job: JobObs) -> Step:
        """The Job exists and has not finished: follow spec.suspend, report queued/running."""
        suspend, queue = self.res.spec.suspend, self.res.spec.resources.queue_name
        if not queue and suspend != job.suspended:
            self.out.job_patches.append((job.name, {"spec": {"suspend": suspend}}))
        if suspend:
            reason = "Suspended"
            message = (
                f"spec.suspend is true; Job {job.name} is managed by Kueue queue {queue} and keeps its state"
                if queue
                else f"spec.suspend is true; Job {job.name} is suspended"
            )
        elif job.queued:
            reason, message = "JobQueued", f"Job {job.name} waits for Kueue admission in queue {queue}"
        else:
            reason, message = "JobRunning", f"Job {job.name} runs stage {stage.name}"
        requeue = self.ctx.config.resync_seconds
        started_at = _epoch(job.start_time)
        if reason == "JobRunning" and started_at is not None and not job.pods_started:
            timeout = self.ctx.config.pod_start_timeout_seconds
            left = timeout - (self.obs.now - started_at)
            if left > 0:
                requeue = min(requeue, left + 1.0)
            elif job.name not in self.obs.pods_pending:
                return Need(pods_pending=(job.name,))
            else:
                reason = PODS_NOT_STARTED
                message = (f"no pod of Job {job.name} has started {timeout:g}s after the Job did: "
                           f"{self.obs.pods_pending[job.name]}")[:4000]
        self.state.stage_waiting(stage, reason, message)
        self.out.requeue_after = requeue
        return STOP


def reconcile_run(res: Resource, obs: Observed, ctx: Context) -> Outcome | Need:
    """Reconcile one run (see `_RunReconcile`)."""
    return _RunReconcile(res.typed(RunCommon, RunStatus), obs, ctx).reconcile()


def dependents(resources: list[Resource], kind: str, name: str, namespace: str) -> list[Resource]:
    """Resources in `namespace` whose spec refers to (kind, name) directly or through a PreferenceModel."""
    out = []
    for r in resources:
        if r.namespace != namespace or not r.info.is_run:
            continue
        if any(k == kind and n == name for k, n, _ in references(r)):
            out.append(r)
    return out


__all__ = [
    "Context",
    "dependents",
    "invalid_outcome",
    "pod_policy_problems",
    "reconcile_constitution",
    "reconcile_run",
    "resolve_storage",
    "spec_problems",
    "transition_events",
]
