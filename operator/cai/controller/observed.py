"""Plain data passed between the controller's I/O and its pure parts (reconcile, builders).

Where it sits: `handlers` turn Job bodies into `JobObs` for the index; `controller` fills an `Observed`
for one run (asking only for what `reconcile` says it `Need`s); `reconcile` returns an `Outcome` that
`controller` applies through `kube`. Everything here is immutable or a fresh value per reconcile, and
can be recomputed from the cluster at any time (nothing is remembered across restarts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LABEL_RUN = "cai.dev/run"
LABEL_KIND = "cai.dev/kind"
LABEL_STAGE = "cai.dev/stage"
ANNOTATION_OUTPUT = "cai.dev/output"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
STORAGE_CONFIGMAP = "cai-storage"


@dataclass(frozen=True)
class JobObs:
    """What the operator needs to know about one stage Job (small: kept in the kopf index)."""

    name: str
    namespace: str
    uid: str
    owner_uid: str
    stage: str
    output: str | None = None
    suspended: bool = False
    queued: bool = False  # created for Kueue and not admitted yet
    active: int = 0
    ready: int = 0  # pods Ready now (running)
    succeeded: int = 0
    failed: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    complete: bool = False
    failed_reason: str | None = None  # the Job's Failed condition reason (BackoffLimitExceeded, ...)
    failed_message: str | None = None

    @property
    def pods_started(self) -> bool:
        """Some pod of this Job has run (is Ready now, or has finished)."""
        return bool(self.ready or self.succeeded or self.failed)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobObs | None:
        """None for Jobs that no cai run controls (no controller ownerReference of group cai.dev)."""
        meta = body.get("metadata") or {}
        owner = next((o for o in meta.get("ownerReferences") or []
                      if o.get("controller") and str(o.get("apiVersion", "")).startswith("cai.dev/")), None)
        labels = meta.get("labels") or {}
        if owner is None or LABEL_STAGE not in labels:
            return None
        spec, status = body.get("spec") or {}, body.get("status") or {}
        conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = conds.get("Failed")
        suspended = bool(spec.get("suspend"))
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            owner_uid=owner.get("uid", ""),
            stage=labels[LABEL_STAGE],
            output=(meta.get("annotations") or {}).get(ANNOTATION_OUTPUT),
            suspended=suspended,
            queued=suspended and KUEUE_QUEUE_LABEL in labels and not status.get("startTime"),
            active=int(status.get("active") or 0),
            ready=int(status.get("ready") or 0),
            succeeded=int(status.get("succeeded") or 0),
            failed=int(status.get("failed") or 0),
            start_time=status.get("startTime"),
            completion_time=status.get("completionTime"),
            complete="Complete" in conds,
            failed_reason=(failed.get("reason") or "JobFailed") if failed else None,
            failed_message=failed.get("message") if failed else None,
        )


@dataclass(frozen=True)
class Storage:
    """Where a run's artifacts go and how pods reach them (never the credentials themselves)."""

    uri: str
    endpoint: str | None = None
    secret_name: str | None = None  # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, via secretKeyRef
    region: str | None = None
    source: str = "operator"  # spec | configmap | operator

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Storage:
        return cls(str(doc["uri"]), **{k: str(doc[k]) for k in ("endpoint", "secret_name", "region", "source")
                                      if doc.get(k) is not None})


@dataclass(frozen=True)
class FrozenPlan:
    """The plan a run started with, kept in its ConfigMap: later stages never re-plan.

    Stage specs (constitution text included) are fixed at start, so editing a Constitution or a
    dependency later does not change a run in flight.
    """

    stages: tuple[str, ...]
    outputs: dict[str, str]  # stage -> artifact URI
    storage: Storage
    constitution_name: str | None = None
    constitution_digest: str | None = None
    specs: dict[str, str] = field(default_factory=dict)  # stage -> StageSpec JSON

    PLAN_KEY = "plan.json"

    def configmap_data(self) -> dict[str, str]:
        plan = {"stages": list(self.stages), "outputs": self.outputs, "storage": self.storage.to_json(),
                "constitution": {"name": self.constitution_name, "digest": self.constitution_digest}}
        return {
            self.PLAN_KEY: json.dumps(plan, sort_keys=True),
            **{f"{s}.json": spec for s, spec in self.specs.items()},
        }

    @classmethod
    def from_configmap_data(cls, data: Mapping[str, str]) -> FrozenPlan:
        plan = json.loads(data[cls.PLAN_KEY])
        const = plan.get("constitution") or {}
        return cls(
            stages=tuple(plan["stages"]),
            outputs=dict(plan["outputs"]),
            storage=Storage.from_json(plan["storage"]),
            constitution_name=const.get("name"),
            constitution_digest=const.get("digest"),
            specs={s: data[f"{s}.json"] for s in plan["stages"] if f"{s}.json" in data},
        )


@dataclass(frozen=True)
class ArtifactObs:
    """An artifact's manifest.json as the operator read it from the run's storage."""

    manifest: dict[str, Any] | None  # None: there is no manifest (the artifact does not exist)
    digest: str | None = None  # sha256 of the manifest's bytes (what a consumer stage records)
    error: str | None = None  # the store could not be read: neither present nor absent is known


@dataclass(frozen=True)
class Need:
    """What reconcile must see before it can decide (the controller fetches it and calls again)."""

    storage_configmap: bool = False
    plan: bool = False
    manifests: tuple[str, ...] = ()  # artifact URIs whose manifests are wanted (output and inputs)
    pod_messages: tuple[str, ...] = ()  # failed Job names whose pods' termination messages are wanted
    pods_pending: tuple[str, ...] = ()  # Job names whose pods have not started: why not

    def __bool__(self) -> bool:
        return bool(self.storage_configmap or self.plan or self.manifests or self.pod_messages
                    or self.pods_pending)


MISSING: Any = object()  # "looked it up: it does not exist" (as opposed to "not looked up yet": None)


@dataclass
class Observed:
    """Everything reconcile may read about one run besides its own spec and status."""

    now: float  # epoch seconds
    jobs: dict[str, JobObs] = field(default_factory=dict)  # by stage, owned by this run's uid
    storage_configmap: Any = None  # None: not fetched; MISSING: absent; else its data dict
    plan: Any = None  # None: not fetched; MISSING: absent; else FrozenPlan
    manifests: dict[str, ArtifactObs] = field(default_factory=dict)  # artifact uri -> its manifest
    pod_messages: dict[str, str] = field(default_factory=dict)  # job name -> termination message
    pods_pending: dict[str, str] = field(default_factory=dict)  # job name -> why no pod has started
    refused: dict[str, str] = field(default_factory=dict)  # object name -> why the apiserver refused it
    problems: list[str] = field(default_factory=list)  # field-named spec problems (InvalidSpec)
    constitution_digests: dict[str, str | None] = field(
        default_factory=dict
    )  # name -> current digest (None: absent)


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """A metric sample reconcile wants recorded once the status that records the transition is written."""

    metric: str  # stage_duration | stage_failure | tokens
    labels: tuple[tuple[str, str], ...]
    value: float = 1.0


@dataclass
class Outcome:
    status: Any  # the new typed status
    creates: list[dict[str, Any]] = field(default_factory=list)  # objects to create, in order (409 = there)
    job_patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (job name, merge patch)
    events: list[EventSpec] = field(default_factory=list)  # posted after the status is written
    observations: list[Observation] = field(default_factory=list)
    requeue_after: float | None = None
    poke_dependents: bool = False  # the summary condition changed: re-check runs that reference this one
    terminal: bool = False
