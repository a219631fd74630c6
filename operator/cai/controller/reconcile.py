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
from ..api.kinds import KINDS, STAGES, CritiqueRunSpec, KindInfo, PreferenceModelSpec, RLAIFRunSpec
from ..api.manifest import Resource
from ..pipeline.conditions import get_condition, is_true, set_condition
from ..pipeline.plan import Blocked, constitution_digest, model_refs, plan_resource
from ..pipeline.status import (
    constitution_status,
    mark_blocked,
    mark_completed,
    mark_invalid,
    mark_stage_failed,
    mark_stage_started,
    mark_stage_succeeded,
    stage_entry,
)
from .builders import build_configmap, build_job, build_service, distributed, job_name
from .config import OperatorConfig
from .merge import MergeError
from .observed import EventSpec, FrozenPlan, JobObs, Need, Observation, Observed, Outcome, Storage

Lookup = Callable[[str, str], Resource | None]

WAITING_RECHECK_SECONDS = 30.0  # dependency pokes usually come first; this is the safety net
CREATE_GRACE_SECONDS = 10.0  # a Job created this recently may simply not be in the watch cache yet
CONFIGMAP_LIMIT = 900_000  # bytes of stage specs; a ConfigMap holds at most 1 MiB
CONSTITUTION_CHANGED = "ConstitutionChanged"


@dataclass(frozen=True)
class Context:
    config: OperatorConfig
    lookup: Lookup


# ------------------------------------------------------------------------------------------ helpers


def stage_names(res: Resource) -> list[str]:
    """The stages a run will execute, in order (what `plan_resource` would list), from its spec alone."""
    spec = res.spec
    names = [s.name for s in res.info.stages]
    if isinstance(spec, CritiqueRunSpec) and not spec.finetune.enabled:
        names.remove("finetune")
    if isinstance(spec, RLAIFRunSpec) and not spec.evaluation.enabled:
        names.remove("evaluate")
    return names


def _epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None


def resolve_storage(res: Resource, configmap: Any, config: OperatorConfig) -> Storage | str | None:
    """spec.storage → namespace ConfigMap `cai-storage` → operator default; a str is a problem to report.

    Keys a resource or ConfigMap leaves out (endpoint, Secret name) come from the operator's config, so a
    namespace can point at another bucket of the cluster's object store with just `uri`.
    """
    spec_storage = getattr(res.spec, "storage", None)
    if spec_storage is not None:
        return Storage(uri=spec_storage.uri.rstrip("/"), endpoint=spec_storage.endpoint or config.s3_endpoint,
                       secret_name=spec_storage.secret_ref.name if spec_storage.secret_ref else config.storage_secret,
                       source="spec")
    if isinstance(configmap, dict):
        uri = str(configmap.get("uri") or "").strip()
        if not uri.startswith(("s3://", "file://")):
            return f"ConfigMap cai-storage in namespace {res.namespace}: key uri must be s3://bucket/prefix or file:///path, got {uri!r}"
        return Storage(uri=uri.rstrip("/"), endpoint=configmap.get("endpoint") or config.s3_endpoint,
                       secret_name=configmap.get("secretName") or config.storage_secret,
                       region=configmap.get("region") or None, source="configmap")
    if config.storage_uri:
        return Storage(uri=config.storage_uri.rstrip("/"), endpoint=config.s3_endpoint,
                       secret_name=config.storage_secret, source="operator")
    return None


def spec_problems(res: Resource) -> list[str]:
    """Field-named problems the apiserver cannot see: model references and builtin prompt sets.

    (Schema and CEL-rule problems come from `parse_resource`, which the controller runs first.)
    """
    from ..data.prompts import check_source
    from ..models.refs import check_model_ref
    from ..validation import prompt_sources

    problems: list[str] = []
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
        return pm.spec.constitution_ref.name if pm is not None else None
    return None


def _current_digest(lookup: Lookup, name: str) -> str | None:
    const = lookup("Constitution", name)
    # From the spec, not status.digest: the spec in the index is already the edited one when the
    # Constitution's own reconcile pokes this run, its status write may not have arrived yet.
    return constitution_digest(const.spec) if const is not None else None


def is_terminal(info: KindInfo, status: Any) -> bool:
    c = get_condition(status, info.summary_condition) if status is not None else None
    return c is not None and c.status in ("True", "False")


def run_state(info: KindInfo, summary: tuple[str, str] | None) -> str:
    """One word for the `cai_runs` gauge from the summary condition's (status, reason): Succeeded/Ready,
    Failed, Running, Queued, Waiting, Suspended or Pending."""
    if summary is None:
        return "Pending"
    value, reason = summary
    if value == "True":
        return info.summary_condition
    if value == "False":
        return "Failed"
    if reason in ("WaitingForDependency", "StorageNotConfigured"):
        return "Waiting"
    if reason == "Suspended":
        return "Suspended"
    if reason == "JobQueued":
        return "Queued"
    return "Running"


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
        kind = "Warning" if after[0] == "False" else "Normal"
        events.append(EventSpec(kind, after[1], after[2]))
    return events


# --------------------------------------------------------------------------------------- constitution


def reconcile_constitution(res: Resource, problems: list[str]) -> Outcome:
    """Constitution: validated; status.digest, principle counts, Ready."""
    old = res.status if res.status is not None else res.info.status()
    if problems:
        status = old.model_copy(deep=True)
        status.observed_generation = res.generation
        set_condition(status, "Ready", "False", "InvalidSpec", "; ".join(problems), res.generation)
    else:
        status = constitution_status(res)
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
        events.append(EventSpec("Normal", "DigestChanged",
                                f"spec changed: digest {new.digest}; runs already started keep the version they started with"))
    return events


# --------------------------------------------------------------------------------------------- runs


def invalid_outcome(res_info: KindInfo, status: Any, generation: int, problems: list[str]) -> Outcome:
    """InvalidSpec: summary False with the field-named problems; terminal (specs are immutable)."""
    old = status.model_copy(deep=True)
    status.observed_generation = generation
    mark_invalid(res_info, status, "; ".join(problems)[:4000], generation)
    out = Outcome(status=status, events=transition_events(res_info, old, status), terminal=True)
    out.poke_dependents = _ctuple(old, res_info.summary_condition) != _ctuple(status, res_info.summary_condition)
    return out


def _start(res: Resource, obs: Observed, ctx: Context, status: Any, out: Outcome) -> FrozenPlan | Need | None:
    """Plan a run that has not started: storage, dependencies, stage specs. None: not now (status says why)."""
    info, gen = res.info, res.generation
    if getattr(res.spec, "storage", None) is None and obs.storage_configmap is None:
        return Need(storage_configmap=True)
    storage = resolve_storage(res, obs.storage_configmap, ctx.config)
    if not isinstance(storage, Storage):
        message = storage or (
            f"no artifact storage configured: set spec.storage, create ConfigMap cai-storage (key uri) in namespace "
            f"{res.namespace}, or start the operator with CAI_STORAGE_URI")
        set_condition(status, info.summary_condition, "Unknown", "StorageNotConfigured", message, gen)
        out.requeue_after = WAITING_RECHECK_SECONDS
        return None
    plan = plan_resource(res, ctx.lookup, storage.uri)
    if isinstance(plan, Blocked):
        mark_blocked(info, status, plan, gen)
        out.requeue_after = None if plan.failed else WAITING_RECHECK_SECONDS
        return None
    if res.spec.suspend:
        set_condition(status, info.summary_condition, "Unknown", "Suspended",
                      "suspended before the first stage (spec.suspend is true)", gen)
        return None
    specs = {s.stage: s.model_dump_json(by_alias=True) for s in plan.stages}
    size = sum(len(v) for v in specs.values())
    if size > CONFIGMAP_LIMIT:
        mark_invalid(info, status, f"stage specs take {size} bytes, more than a ConfigMap holds ({CONFIGMAP_LIMIT}): "
                     "shorten the constitution (few-shot examples)", gen)
        return None
    return FrozenPlan(
        stages=tuple(s.stage for s in plan.stages),
        outputs={s.stage: s.output for s in plan.stages},
        storage=storage,
        constitution_name=constitution_name(res, ctx.lookup),
        constitution_digest=plan.constitution_digest,
        specs=specs,
    )


def _attempts(res: Resource, job: JobObs) -> int:
    pods = job.failed + job.succeeded + job.active
    per = res.spec.resources.nodes if distributed(res, job.stage) else 1
    return max(1, math.ceil(pods / per))


def _note_constitution(res: Resource, status: Any, ctx: Context) -> None:
    """Surface (never act on) a Constitution edited or deleted after the run started."""
    recorded = status.constitution_digest
    name = constitution_name(res, ctx.lookup)
    if not recorded or not name:
        return
    current = _current_digest(ctx.lookup, name)
    if current == recorded:
        if get_condition(status, CONSTITUTION_CHANGED) is not None:
            set_condition(status, CONSTITUTION_CHANGED, "False", "ConstitutionUnchanged",
                          f"Constitution/{name} matches the version this run started with", res.generation)
        return
    if current is None:
        reason, message = "ConstitutionDeleted", f"Constitution/{name} was deleted after this run started"
    else:
        reason, message = "ConstitutionEdited", f"Constitution/{name} changed after this run started (now {current[:19]}…)"
    set_condition(status, CONSTITUTION_CHANGED, "True", reason,
                  f"{message}; the run keeps the version it started with ({recorded[:19]}…)", res.generation)


def reconcile_run(res: Resource, obs: Observed, ctx: Context) -> Outcome | Need:
    info, gen, cfg = res.info, res.generation, ctx.config
    old = res.status if res.status is not None else info.status()
    status = old.model_copy(deep=True)
    status.observed_generation = gen
    out = Outcome(status=status)
    summary_before = _ctuple(old, info.summary_condition)

    def finish() -> Outcome:
        out.events = transition_events(info, old, status) + out.events
        summary_after = _ctuple(status, info.summary_condition)
        out.terminal = is_terminal(info, status)
        # Dependents only care about Ready/Succeeded becoming True or False.
        out.poke_dependents = out.terminal and (summary_before or ("",))[0] != (summary_after or ("",))[0]
        if out.terminal:
            out.requeue_after = None
        return out

    if is_terminal(info, old):
        return finish()  # finished runs never change, not even when their Constitution is edited later

    started = bool(obs.jobs) or bool(status.stages) or status.constitution_digest is not None
    plan: FrozenPlan | None = obs.plan if isinstance(obs.plan, FrozenPlan) else None
    if not started and obs.problems:
        return invalid_outcome(info, status, gen, obs.problems)
    if not started:
        started_plan = _start(res, obs, ctx, status, out)
        if isinstance(started_plan, Need):
            return started_plan
        if started_plan is None:
            return finish()
        if plan is None:
            plan = started_plan
            out.creates.append(build_configmap(res, plan))
        # else: a ConfigMap from an attempt that crashed before writing status; it is the frozen plan.
        status.constitution_digest = plan.constitution_digest
    _note_constitution(res, status, ctx)

    names = list(plan.stages) if plan else stage_names(res)
    suspend, queue = res.spec.suspend, res.spec.resources.queue_name
    now = obs.now
    for stage in names:
        st = STAGES[stage][1]
        if is_true(status, st.condition):
            continue
        job = obs.jobs.get(stage)
        entry = next((s for s in status.stages if s.name == stage), None)
        name = job_name(res.name, stage)

        if job is None:
            if suspend:
                set_condition(status, info.summary_condition, "Unknown", "Suspended",
                              f"suspended before stage {stage} (spec.suspend is true)", gen)
                break
            created_at = _epoch(entry.start_time) if entry and entry.job_name == name and not entry.completion_time else None
            if created_at is not None and now - created_at < CREATE_GRACE_SECONDS:
                out.requeue_after = max(1.0, CREATE_GRACE_SECONDS - (now - created_at))
                break
            if plan is None:
                if obs.plan is None:
                    return Need(plan=True)
                # The ConfigMap is gone (deleted by hand): plan again from the current dependencies.
                replanned = _start(res, obs, ctx, status, out)
                if isinstance(replanned, Need):
                    return replanned
                if replanned is None:
                    break
                plan = replanned
                out.creates.append(build_configmap(res, plan))
                out.events.append(EventSpec("Warning", "PlanRecreated",
                                            "the run's stage ConfigMap was missing; planned again from the current dependencies"))
            try:
                job_obj = build_job(res, stage, plan, cfg)
            except MergeError as e:  # resources.podTemplate cannot be merged into the pod
                mark_invalid(info, status, f"spec.resources.podTemplate: {e}", gen)
                return finish()
            if distributed(res, stage):
                out.creates.append(build_service(res, stage))
            out.creates.append(job_obj)
            reason = "JobQueued" if queue else "JobRunning"
            if entry is None or entry.job_name != name or entry.completion_time:
                mark_stage_started(info, status, st, gen, job_name=name, reason=reason)
            message = (f"Job {name} waits for Kueue admission in queue {queue}" if queue
                       else f"Job {name} runs stage {stage}")
            set_condition(status, st.condition, "Unknown", reason, message, gen)
            set_condition(status, info.summary_condition, "Unknown", reason, f"stage {stage}: {message}", gen)
            out.requeue_after = CREATE_GRACE_SECONDS
            break

        if entry is None or entry.job_name != job.name:
            # Created before a restart, or by an attempt whose status write was lost: adopt it.
            mark_stage_started(info, status, st, gen, job_name=job.name, reason="JobRunning")
            entry = stage_entry(status, stage)
            entry.start_time = job.start_time or entry.start_time
        entry.attempts = max(entry.attempts, _attempts(res, job))

        if job.complete:
            uri = job.output or (plan.outputs.get(stage) if plan else None)
            if uri is None:
                if obs.plan is None:
                    return Need(plan=True)
                uri = ""
            if uri and uri not in obs.manifests:
                return Need(manifests=(uri,))
            manifest = obs.manifests.get(uri) or {}
            # JSON has no NaN/Infinity (the apiserver would refuse the status): leave such figures out.
            metrics = {k: v for k, v in (manifest.get("metrics") or {}).items()
                       if not (isinstance(v, float) and not math.isfinite(v))}
            mark_stage_succeeded(info, status, st, uri, metrics, gen)
            entry.completion_time = job.completion_time or entry.completion_time or now_rfc3339()
            start, end = _epoch(job.start_time or entry.start_time), _epoch(entry.completion_time)
            if start is not None and end is not None:
                out.observations.append(Observation("stage_duration", (("kind", res.kind), ("stage", stage)), max(0.0, end - start)))
            tokens = metrics.get("tokensGenerated")
            if isinstance(tokens, (int, float)) and not isinstance(tokens, bool) and tokens > 0:
                out.observations.append(Observation("tokens", (("kind", res.kind), ("stage", stage)), float(tokens)))
            continue

        if job.failed_reason:
            if job.name not in obs.pod_messages:
                return Need(pod_messages=(job.name,))
            detail = obs.pod_messages[job.name]
            message = job.failed_message or job.failed_reason
            if detail:
                message = f"{message}; pod said: {detail}"
            mark_stage_failed(info, status, st, job.failed_reason, message[:8000], gen)
            out.observations.append(Observation("stage_failure", (("kind", res.kind), ("stage", stage), ("reason", job.failed_reason))))
            break

        # The stage's Job exists and has not finished.
        if not queue and suspend != job.suspended:
            out.job_patches.append((job.name, {"spec": {"suspend": suspend}}))
        if suspend:
            reason = "Suspended"
            message = (f"spec.suspend is true; Job {job.name} is managed by Kueue queue {queue} and keeps its state"
                       if queue else f"spec.suspend is true; Job {job.name} is suspended")
        elif job.queued:
            reason, message = "JobQueued", f"Job {job.name} waits for Kueue admission in queue {queue}"
        else:
            reason, message = "JobRunning", f"Job {job.name} runs stage {stage}"
        set_condition(status, st.condition, "Unknown", reason, message, gen)
        set_condition(status, info.summary_condition, "Unknown", reason, f"stage {stage}: {message}", gen)
        out.requeue_after = cfg.resync_seconds
        break
    else:
        mark_completed(info, status, gen)
    return finish()


def dependents(resources: list[Resource], kind: str, name: str, namespace: str) -> list[Resource]:
    """Resources in `namespace` whose spec refers to (kind, name) directly or through a PreferenceModel."""
    from ..pipeline.plan import references

    out = []
    for r in resources:
        if r.namespace != namespace or not r.info.is_run:
            continue
        if any(k == kind and n == name for k, n, _ in references(r)):
            out.append(r)
    return out


__all__ = [
    "KINDS",
    "Context",
    "dependents",
    "invalid_outcome",
    "is_terminal",
    "reconcile_constitution",
    "reconcile_run",
    "resolve_storage",
    "run_state",
    "spec_problems",
    "stage_names",
    "transition_events",
]
