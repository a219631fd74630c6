"""kopf registrations: indexes of the four kinds and of stage Jobs, and events that queue a reconcile.

Where it sits: the thin layer between kopf and `controller` (docs/design.md#the-operator). Every handler
is a few lines: keep an index entry, or put the key of the affected object on the work queue. The work
itself (parse → reconcile → apply → status) happens in `controller`, one key at a time, so an object is
never reconciled
twice concurrently even when its own event, a Job event and a dependency's change arrive together.

Why `on.event` and indexes rather than `on.create/update` and timers: the reconcile is level-triggered
and idempotent, so it needs no per-handler progress kept in annotations (one PATCH fewer per change), and
timers would put a finalizer on every run (deletion would then need the operator alive). kopf still gives
what matters: watches with reconnects and relists, indexes filled before the first handler runs, and the
initial listing after a restart, which re-queues every object.

Runs with `kopf run -m cai.controller.handlers` too; `cai operator` (main.py) adds the CLI and defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from ..api.base import GROUP, VERSION
from ..api.kinds import KINDS
from .config import OperatorConfig
from .controller import INDEX_OF_KIND, JOBS_INDEX, Controller, snapshot
from .kube import KubeClient, login_sync
from .metrics import Endpoints, install_state_collector
from .observed import LABEL_KIND, LABEL_RUN, JobObs


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    return login_sync(settings)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo,
                  logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    config: OperatorConfig = memo.get("config") or OperatorConfig.from_env()
    settings.posting.level = logging.WARNING  # our own events say what happened; kopf's would repeat it
    settings.watching.server_timeout = 300  # re-establish watches every few minutes (proxies drop idle ones)
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.batching.batch_window = 0.05  # an event's handlers start after 50 ms of quiet on that object
    # Server-side filter: only stage Jobs reach the operator, not every Job in the cluster.
    settings.watching.label_selectors["batch", "v1", "jobs"] = LABEL_RUN
    settings.networking.request_timeout = 60
    # Serve the resources and namespaces known at start-up: no cluster-wide watch of CRDs and Namespaces
    # (two permissions fewer, docs/rbac.md). Install the CRDs before the operator, as the chart does.
    settings.scanning.disabled = True
    # kopf deep-copies every event's body to detect changes for on.create/update handlers; we have none
    # (reconcile compares desired with actual itself), so skip that work: a third of the CPU per event.
    settings.persistence.diffbase_storage = _NoDiffBase()
    kube = KubeClient(login=_async_login(settings))
    controller = Controller(
        config, kube, standalone=bool(memo.get("standalone")) or not config.leader_election
    )
    memo["controller"] = controller
    install_state_collector(controller.state_snapshot)
    endpoints = Endpoints(controller.alive, controller.readiness)
    await endpoints.start(config.metrics_port, config.health_port)
    memo["endpoints"] = endpoints
    await controller.start()
    logger.info(
        "cai operator started (%s; images %s / %s)",
        "standalone"
        if controller.standalone
        else f"leader election on Lease {config.lease_namespace}/{config.lease_name} as {config.identity}",
        config.stage_image,
        config.stage_image_gpu,
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "controller" in memo:
        await memo["controller"].stop()
    if "endpoints" in memo:
        await memo["endpoints"].stop()


class _NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled state": only needed by change-detecting handlers, which this operator does not use."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def _async_login(settings: kopf.OperatorSettings) -> Callable[[], Awaitable[kopf.ConnectionInfo]]:
    async def login_async() -> kopf.ConnectionInfo:
        return login_sync(settings)
    return login_async


# ---- indexes: what reconcile reads instead of GET/LIST calls

# Handlers are coroutines: kopf runs plain functions in a thread pool, a hop per event for nothing here.
async def _index_object(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(body.metadata.namespace or "", body.metadata.name or ""): snapshot(body)}


for _info in KINDS.values():
    kopf.index(GROUP, VERSION, _info.plural, id=INDEX_OF_KIND[_info.kind])(_index_object)


@kopf.index("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT}, id=JOBS_INDEX)
async def stage_jobs_idx(body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobObs] | None:
    job = JobObs.from_body(body)
    return {(job.namespace, job.owner_uid): job} if job is not None else None


# ---- events: queue the object (or the run owning the Job) for a reconcile

async def _on_object_event(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    controller: Controller = memo["controller"]
    controller.bind_indexes(kwargs)
    controller.add((str(body["kind"]), body.metadata.namespace or "", body.metadata.name or ""))


for _info in KINDS.values():
    kopf.on.event(GROUP, VERSION, _info.plural, id=f"{_info.plural}_event")(_on_object_event)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT})
async def on_stage_job_event(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    controller: Controller = memo["controller"]
    controller.bind_indexes(kwargs)
    kind = body.metadata.labels.get(LABEL_KIND)
    if kind in KINDS:
        controller.add((kind, body.metadata.namespace or "", body.metadata.labels[LABEL_RUN]))
