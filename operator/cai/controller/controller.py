"""The reconcile worker: key off the queue → observe → pure reconcile → apply through `kube`.

Where it sits: `handlers` feed the queue and hand over kopf's indexes; this module reads those indexes
(runs, Constitutions, stage Jobs), asks `kube` only for what `reconcile` says it needs (a manifest, the
frozen plan, pods' termination messages, the namespace's `cai-storage`), applies the outcome in order
(create children → patch Jobs → write status → post events → record metrics), and requeues.

Errors are classified like kopf's: a spec problem is permanent (InvalidSpec, no retry until the spec
changes), waiting is temporary (requeue after a delay and on the dependency's own change), API failures
are retried with exponential backoff per key. Status is written only when it changed, through the status
subresource, with a resourceVersion precondition: a reconcile that raced a newer event loses cleanly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..api.base import API_VERSION
from ..api.common import now_rfc3339
from ..api.kinds import KINDS
from ..api.manifest import Resource, parse_resource
from ..api.references import references
from ..pipeline.runstate import is_terminal, state_word
from . import metrics
from .builders import build_event, configmap_name, involved_object
from .config import OperatorConfig
from .kube import ApiError, KubeClient
from .leader import LeaderElector
from .merge import merge_patch
from .observed import (
    MISSING,
    STORAGE_CONFIGMAP,
    ArtifactObs,
    FrozenPlan,
    JobObs,
    Need,
    Observed,
    Outcome,
    Storage,
)
from .reconcile import Context, invalid_outcome, reconcile_constitution, reconcile_run, spec_problems
from .workqueue import WorkQueue

log = logging.getLogger("cai.controller")

Key = tuple[str, str, str]  # (kind, namespace, name)
INDEX_OF_KIND = {kind: f"{info.plural}_idx" for kind, info in KINDS.items()}
JOBS_INDEX = "stage_jobs_idx"
STORAGE_CACHE_SECONDS = 5.0  # runs created together in one namespace share one GET of cai-storage
MAX_NEED_ROUNDS = 6


def snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the run indexes keep of an object: identity, spec, status (no managedFields, no annotations)."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "resourceVersion",
                                               "deletionTimestamp", "labels")},
        "spec": body.get("spec"), "status": body.get("status"),
    }


_PARSED: dict[tuple[str, str, str], tuple[str, tuple[Resource | None, Any, list[str]]]] = {}


def parse(doc: Mapping[str, Any]) -> tuple[Resource | None, Any, list[str]]:
    """(resource without status problems, typed status, spec problems) of an index snapshot.

    Cached per resourceVersion: a Constitution looked up by 500 runs is validated once. Callers never
    mutate what they get (reconcile works on copies), and the cache holds only the latest version.
    """
    meta = doc["metadata"]
    key = (doc["kind"], meta["namespace"], meta["name"])
    cached = _PARSED.get(key)
    if cached is not None and cached[0] == meta.get("resourceVersion"):
        return cached[1]
    parsed = _parse(doc)
    _PARSED[key] = (meta.get("resourceVersion") or "", parsed)
    return parsed


def forget_parsed(key: tuple[str, str, str]) -> None:
    _PARSED.pop(key, None)


def _parse(doc: Mapping[str, Any]) -> tuple[Resource | None, Any, list[str]]:
    info = KINDS[doc["kind"]]
    res, problems = parse_resource({k: v for k, v in doc.items() if k != "status"}, "cluster")
    raw_status = doc.get("status") or {}
    try:
        status = info.status.model_validate(raw_status, by_name=False)
    except ValueError:
        # Status written by an older operator or by hand: start over from what the Jobs say.
        log.warning("%s/%s: unreadable status, rebuilding it", doc["kind"], doc["metadata"]["name"])
        status = info.status()
    if res is not None:
        res.status = status
    return res, status, [f"{p.path}: {p.message}" for p in problems]


class Controller:
    def __init__(self, config: OperatorConfig, kube: KubeClient, *, standalone: bool = False):
        self.config, self.kube = config, kube
        self.queue: WorkQueue[Key] = WorkQueue()
        self.indexes: dict[str, Any] = {}
        self.standalone = standalone
        self.elector: LeaderElector | None = None
        self._storage_cache: dict[str, tuple[float, Any]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.ready = False
        self.started_at = time.monotonic()

    # ---- lifecycle

    @property
    def acting(self) -> bool:
        return self.standalone or (self.elector is not None and self.elector.leading)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.config.workers):
            self._tasks.append(loop.create_task(self._worker(), name=f"cai-worker-{i}"))
        if self.standalone or not self.config.leader_election:
            self.standalone = True
            metrics.LEADER.set(1)
        else:
            self.elector = LeaderElector(
                self.kube, name=self.config.lease_name, namespace=self.config.lease_namespace,
                identity=self.config.identity, duration=self.config.lease_duration_seconds,
                renew_every=self.config.lease_renew_seconds,
                renew_deadline=self.config.lease_renew_deadline_seconds, on_change=self._leadership_changed)
            self._tasks.append(loop.create_task(self.elector.run(), name="cai-leader-election"))
        if (self.config.storage_uri or "").startswith("s3://"):
            # s3fs/botocore take a second or more to import: do it now, not in the first reconcile
            # that reads a manifest.
            self._tasks.append(loop.create_task(asyncio.to_thread(_warm_store), name="cai-warm-store"))
        self.ready = True

    async def stop(self) -> None:
        if self.elector is not None:
            await self.elector.release()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.queue.close()
        await self.kube.close()

    def check_acting(self) -> None:
        """Before each write: a replica that lost the Lease during a reconcile writes nothing more."""
        if not self.acting:
            raise NotActing

    def _leadership_changed(self, leading: bool) -> None:
        metrics.LEADER.set(1 if leading else 0)
        if leading:  # take over: everything may have moved while we were following
            self.add_all()

    def alive(self) -> tuple[bool, str]:
        dead = [t.get_name() for t in self._tasks if t.done() and t.get_name() != "cai-warm-store"]
        if dead:
            return False, f"background tasks stopped: {', '.join(dead)}"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting"
        role = "leader" if self.acting else "standby"
        return True, f"ready ({role}, {len(self.queue)} queued)"

    # ---- indexes and keys

    def bind_indexes(self, kwargs: Mapping[str, Any]) -> None:
        for name in (*INDEX_OF_KIND.values(), JOBS_INDEX):
            if name not in self.indexes and name in kwargs:
                self.indexes[name] = kwargs[name]

    def body(self, key: Key) -> dict[str, Any] | None:
        kind, namespace, name = key
        index = self.indexes.get(INDEX_OF_KIND[kind])
        if index is None:
            return None
        store = index.get((namespace, name))
        return next(iter(store), None) if store else None

    def lookup_in(self, namespace: str) -> Callable[[str, str], Resource | None]:
        def lookup(kind: str, name: str) -> Resource | None:
            doc = self.body((kind, namespace, name))
            if doc is None:
                return None
            res, _, _ = parse(doc)
            return res
        return lookup

    def resources(self, kinds: Iterable[str] = KINDS) -> Iterable[dict[str, Any]]:
        for kind in kinds:
            index = self.indexes.get(INDEX_OF_KIND[kind])
            if index is None:
                continue
            for store in list(index.values()):
                yield from list(store)

    def jobs_of(self, namespace: str, uid: str) -> dict[str, JobObs]:
        index = self.indexes.get(JOBS_INDEX)
        store = index.get((namespace, uid)) if index is not None else None
        return {j.stage: j for j in store or ()}

    def add(self, key: Key) -> None:
        self.queue.add(key)
        metrics.QUEUE_DEPTH.set(len(self.queue))

    def add_all(self) -> None:
        for doc in self.resources():
            self.add((doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"]))

    def poke_dependents(self, kind: str, namespace: str, name: str) -> None:
        """Queue the runs of `namespace` that reference (kind, name): read from raw specs, no parsing."""
        for doc in self.resources([k for k, i in KINDS.items() if i.is_run]):
            if doc["metadata"]["namespace"] == namespace and (kind, name) in raw_references(doc):
                self.add((doc["kind"], namespace, doc["metadata"]["name"]))

    def state_snapshot(self) -> list[tuple[str, str, str, str, dict[str, float]]]:
        rows = []
        for doc in self.resources():
            info = KINDS[doc["kind"]]
            status = doc.get("status") or {}
            summary = next(
                (c for c in status.get("conditions") or [] if c.get("type") == info.summary_condition), None
            )
            state = state_word(
                info, (summary.get("status", ""), summary.get("reason", "")) if summary else None
            )
            rows.append((doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"], state,
                         dict(status.get("metrics") or {})))
        return rows

    # ---- the worker

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            metrics.QUEUE_DEPTH.set(len(self.queue))
            try:
                await self._process(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s %s/%s: reconcile failed unexpectedly", *key)
                metrics.RECONCILE_TOTAL.labels(kind=key[0], result="error").inc()
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: Key) -> None:
        kind = key[0]
        if not self.acting:
            metrics.RECONCILE_TOTAL.labels(kind=kind, result="skipped").inc()
            return
        doc = self.body(key)
        if doc is None or doc["metadata"].get("deletionTimestamp"):
            self.queue.cancel(key)  # gone (or going): its children go with it through ownerReferences
            forget_parsed(key)
            return
        started = time.perf_counter()
        try:
            result = await self.reconcile(doc)
        except NotActing:  # leadership lost mid-reconcile: the new leader redoes it
            result = "skipped"
        except ApiError as e:
            result = "error"
            delay = self.queue.add_rate_limited(key)
            log.warning("%s %s/%s: %s (retry in %.1fs)", *key, e, delay)
        finally:
            metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - started)
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=result).inc()

    async def reconcile(self, doc: dict[str, Any]) -> str:
        """One reconcile of one object; returns the result label (ok, requeue, conflict)."""
        info = KINDS[doc["kind"]]
        meta = doc["metadata"]
        key: Key = (doc["kind"], meta["namespace"], meta["name"])
        res, status, problems = parse(doc)
        if res is None:
            outcome = invalid_outcome(
                info, status, int(meta.get("generation") or 1), problems or ["spec: cannot be read"]
            )
            return await self.apply(key, doc, None, outcome)
        if not info.is_run:
            return await self.apply(key, doc, res, reconcile_constitution(res, problems))
        ctx = Context(config=self.config, lookup=self.lookup_in(res.namespace))
        obs = Observed(now=time.time(), jobs=self.jobs_of(res.namespace, res.uid))
        if not is_terminal(info, status) and not obs.jobs and not status.stages:
            obs.problems = list(dict.fromkeys(problems + spec_problems(res, self.config)))
        for _ in range(MAX_NEED_ROUNDS):
            decision = reconcile_run(res, obs, ctx)
            if isinstance(decision, Need):
                await self.fetch(res, decision, obs)
                continue
            try:
                result = await self.apply(key, doc, res, decision)
            except CreateRefused as e:
                # Decide again knowing the refusal: the run's status then carries the apiserver's message.
                obs.refused[e.name] = e.message
                continue
            if result != "replan":
                return result
            # Our ConfigMap was already there (an attempt that died before writing status): its plan is
            # the frozen one, so decide again with it rather than with the plan made just now.
            await self.fetch(res, Need(plan=True), obs)
        raise RuntimeError(f"reconcile of {res.display} kept asking for more: {decision}")

    async def fetch(self, res: Resource, need: Need, obs: Observed) -> None:
        """Fill `obs` with exactly what reconcile asked for."""
        if need.storage_configmap:
            obs.storage_configmap = await self._storage_configmap(res.namespace)
        if need.plan:
            cm = await self.kube.get("v1", "ConfigMap", res.namespace, configmap_name(res))
            obs.plan = (
                FrozenPlan.from_configmap_data(cm.get("data") or {})
                if cm and _owned_by(cm, res.uid)
                else MISSING
            )
        storage = obs.plan.storage if isinstance(obs.plan, FrozenPlan) else None
        for uri in need.manifests:
            obs.manifests[uri] = await asyncio.to_thread(read_artifact, uri, storage)
        for job in need.pod_messages:
            obs.pod_messages[job] = await self._pod_message(res.namespace, job)
        for job in need.pods_pending:
            obs.pods_pending[job] = await self._why_pending(res.namespace, job)

    async def _storage_configmap(self, namespace: str) -> Any:
        """The namespace's cai-storage data (MISSING if absent), shared by the runs that start together:
        one GET per namespace per few seconds, and concurrent callers wait for the same GET."""
        cached = self._storage_cache.get(namespace)
        now = time.monotonic()
        if cached is not None and now - cached[0] < STORAGE_CACHE_SECONDS:
            return await cached[1] if isinstance(cached[1], asyncio.Future) else cached[1]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._storage_cache[namespace] = (now, future)
        try:
            cm = await self.kube.get("v1", "ConfigMap", namespace, STORAGE_CONFIGMAP)
        except BaseException as e:
            self._storage_cache.pop(namespace, None)
            future.set_exception(e)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        value = (cm.get("data") or {}) if cm is not None else MISSING
        self._storage_cache[namespace] = (time.monotonic(), value)
        future.set_result(value)
        return value

    async def _pod_message(self, namespace: str, job: str) -> str:
        """The termination message of the Job's most recent failed pod ('' when none says anything)."""
        pods = await self.kube.list("v1", "Pod", namespace, f"batch.kubernetes.io/job-name={job}")
        best: tuple[str, str] = ("", "")
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                    "terminated"
                )
                if term and term.get("exitCode", 0) != 0:
                    finished = term.get("finishedAt") or ""
                    text = (
                        term.get("message") or ""
                    ).strip() or f"exit code {term.get('exitCode')} ({term.get('reason', 'Error')})"
                    if finished >= best[0]:
                        best = (finished, f"{pod['metadata']['name']}: {text}")
        return best[1]

    async def _why_pending(self, namespace: str, job: str) -> str:
        """Why no pod of the Job runs: its pods' scheduling and container-waiting reasons, or, when it has
        no pod at all, the Job controller's last FailedCreate event (quota, admission, ServiceAccount)."""
        pods = await self.kube.list("v1", "Pod", namespace, f"batch.kubernetes.io/job-name={job}")
        said: list[str] = []
        for pod in pods:
            status, name = pod.get("status") or {}, pod["metadata"]["name"]
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    said.append(f"{name}: {cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}")
            for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
                waiting = (cs.get("state") or {}).get("waiting")
                if waiting:
                    said.append(f"{name}: {waiting.get('reason', 'Waiting')}: {waiting.get('message', '')}")
        if pods:
            return "; ".join(dict.fromkeys(s.rstrip(": ") for s in said)) or "its pods are pending"
        events = await self.kube.list("v1", "Event", namespace,
                                      field_selector=f"involvedObject.kind=Job,involvedObject.name={job}")
        failed = sorted((e for e in events if e.get("reason") == "FailedCreate"),
                        key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        if failed:
            return f"no pod could be created: {failed[-1].get('message', '')}"
        return f"no pod exists yet (kubectl -n {namespace} describe job {job})"

    # ---- applying an outcome

    async def apply(self, key: Key, doc: dict[str, Any], res: Resource | None, out: Outcome) -> str:
        meta = doc["metadata"]
        namespace = meta["namespace"]
        involved = {"apiVersion": API_VERSION, "kind": key[0], "name": meta["name"], "namespace": namespace,
                    "uid": meta["uid"]} if res is None else involved_object(res)
        created_events: list[tuple[str, str, str]] = []
        for obj in out.creates:
            kind, name = obj["kind"], obj["metadata"]["name"]
            self.check_acting()
            try:
                created, _ = await self.kube.create(obj)
            except ApiError as e:
                if e.status == 403 and res is not None:
                    # Quota, an admission webhook or RBAC: not a spec problem, and no retry soon fixes it.
                    log.warning("%s %s/%s refused: %s", kind, namespace, name, e.message)
                    raise CreateRefused(name, e.message or e.reason) from e
                if e.status not in (400, 422) or res is None:
                    raise
                # The apiserver refuses the child (e.g. a podTemplate that makes an invalid pod): a spec
                # problem, not something a retry fixes.
                invalid = invalid_outcome(res.info, out.status, res.generation,
                                          [f"{kind} {name} was rejected by the apiserver: {e.message}"])
                return await self.apply(key, doc, res, invalid)
            if created:
                log.info("Created %s %s/%s", kind, namespace, name)
                if kind == "Job":
                    metrics.JOBS_CREATED.labels(
                        kind=key[0], stage=obj["metadata"]["labels"]["cai.dev/stage"]
                    ).inc()
                    created_events.append(("Normal", "JobCreated", f"Created Job {name}"))
            elif kind in ("Job", "ConfigMap"):
                existing = await self.kube.get(obj["apiVersion"], kind, namespace, name)
                if existing is not None and not _owned_by(existing, meta["uid"]):
                    # An older run of the same name whose children are still being garbage-collected.
                    log.info(
                        "%s %s/%s belongs to another object; waiting for it to go", kind, namespace, name
                    )
                    self.queue.add_after(key, 5.0)
                    return "requeue"
                if kind == "ConfigMap" and existing is not None and existing.get("data") != obj["data"]:
                    return "replan"
        for job, patch in out.job_patches:
            self.check_acting()
            await self.kube.patch("batch/v1", "Job", namespace, job, patch)
            log.info("Patched Job %s/%s: %s", namespace, job, patch)
        new_status = out.status.to_wire()
        old_status = doc.get("status") or {}
        patch = merge_patch(old_status, new_status)
        result = "ok"
        if patch:
            self.check_acting()
            written = await self.kube.patch_status(
                key[0], namespace, meta["name"], meta["resourceVersion"], patch
            )
            if not written:
                # Someone (our own previous write, usually) moved the object on: a newer event follows.
                self.queue.add_after(key, 1.0)
                await asyncio.gather(*(self._event(involved, *event) for event in created_events))
                return "conflict"
        events = [*created_events, *((e.type, e.reason, e.message) for e in out.events
                                     # "Created Job x" already says the stage started.
                                     if not (created_events and e.reason in ("JobRunning", "JobQueued")))]
        await asyncio.gather(*(self._event(involved, *event) for event in events))
        for obs in out.observations:
            metrics.record(obs.metric, obs.labels, obs.value)
        if out.poke_dependents:
            self.poke_dependents(key[0], namespace, meta["name"])
        self.queue.forget(key)
        if out.requeue_after is not None:
            self.queue.add_after(key, out.requeue_after)
        return result

    async def _event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        log.info("%s/%s: %s %s: %s", involved["kind"], involved["name"], type_, reason, message)
        await self.kube.post_event(
            build_event(involved, type_, reason, message, now_rfc3339(), self.config.identity)
        )


class NotActing(Exception):
    """This replica stopped leading while it reconciled."""


class CreateRefused(Exception):
    """The apiserver refused a child object with 403 (reconcile decides again, knowing it)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


def raw_references(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) a run's raw spec refers to (the fields `pipeline.plan.references` reads, unparsed)."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return set()
    return {(kind, name) for kind, name, _ in references(KINDS[doc["kind"]].spec, spec)}


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(o.get("uid") == uid for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _warm_store() -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass


def read_artifact(uri: str, storage: Storage | None) -> ArtifactObs:
    """An artifact's manifest and its digest, read with the operator's own store credentials from the
    endpoint of the run's storage (docs/operator.md#storage-resolution)."""
    from ..store import MANIFEST, filesystem, join
    from ..store.fs import s3_options

    try:
        if uri.startswith("s3://") and storage is not None and (storage.endpoint or storage.region):
            import fsspec

            opts = s3_options()
            client = {**opts.get("client_kwargs", {}),
                      **({"endpoint_url": storage.endpoint} if storage.endpoint else {}),
                      **({"region_name": storage.region} if storage.region else {})}
            fs, path = fsspec.filesystem("s3", **{**opts, "client_kwargs": client}), join(uri, MANIFEST)[5:]
        else:
            fs, path = filesystem(join(uri, MANIFEST))
        with fs.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return ArtifactObs(None)
    except Exception as e:  # noqa: BLE001 — credentials, network, permissions: reported, retried later
        log.warning("could not read the manifest of %s: %s: %s", uri, type(e).__name__, e)
        return ArtifactObs(None, error=f"{type(e).__name__}: {e}"[:500])
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    # The digest store.manifest_digest computes: sha256 of the manifest's bytes. A manifest that is not a
    # JSON object is there but matches no plan ({}).
    return ArtifactObs(manifest if isinstance(manifest, dict) else {}, hashlib.sha256(raw).hexdigest())


__all__ = ["Controller", "parse", "raw_references", "snapshot"]
