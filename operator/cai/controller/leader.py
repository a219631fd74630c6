"""Leader election on a coordination.k8s.io Lease: with two replicas, exactly one reconciles.

Where it sits: `controller` starts `LeaderElector.run()` next to kopf. Both replicas keep kopf's watches
and indexes warm (a hot standby); only the holder of the Lease creates Jobs or writes status. The
decision (`decide`) is pure; the loop does the Lease GET/PUT through `kube`.

Like client-go, followers judge expiry by their own clock: a Lease whose record has not changed for
`leaseDurationSeconds` since they first saw it is free, so clocks need not agree. The identity is the
pod name, so a container restarted in the same pod takes its Lease back at once. Like client-go's
RenewDeadline, a leader that has not renewed within `renew_deadline` (shorter than the Lease) stops
acting at once, even while its renew call still hangs: `leading` is checked against the last successful
renew every time it is read, and each attempt is cut off at the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .kube import ApiError, KubeClient

log = logging.getLogger("cai.controller.leader")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Decision:
    action: str  # create | renew | acquire | follow
    lease: dict[str, Any] | None = None  # the object to write


def decide(lease: dict[str, Any] | None, identity: str, duration: float, observed_since: float | None,
           now: float, name: str, namespace: str) -> Decision:
    """What to do with the Lease as read now. `observed_since`: when this record was first seen unchanged."""
    spec_now = {"holderIdentity": identity, "leaseDurationSeconds": max(1, round(duration)),
                "renewTime": _micro_now()}
    if lease is None:
        return Decision("create", {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {**spec_now, "acquireTime": spec_now["renewTime"], "leaseTransitions": 0},
        })
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == identity:
        return Decision("renew", {**lease, "spec": {**spec, **spec_now}})
    held_for = float(spec.get("leaseDurationSeconds") or duration)
    expired = not holder or (observed_since is not None and now - observed_since >= held_for)
    if expired:
        return Decision("acquire", {**lease, "spec": {
            **spec, **spec_now, "acquireTime": spec_now["renewTime"],
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}})
    return Decision("follow")


class LeaderElector:
    def __init__(self, kube: KubeClient, *, name: str, namespace: str, identity: str, duration: float = 15.0,
                 renew_every: float = 2.0, renew_deadline: float | None = None,
                 on_change: Callable[[bool], None] | None = None):
        self.kube, self.name, self.namespace, self.identity = kube, name, namespace, identity
        self.duration, self.renew_every = duration, renew_every
        self.renew_deadline = renew_deadline or duration * 2 / 3
        self.on_change = on_change or (lambda leading: None)
        self._leading = False
        self._renewed_at = 0.0
        self._seen: tuple[str, str] | None = None  # (resourceVersion, holder) of the record last read
        self._seen_since: float | None = None

    @property
    def leading(self) -> bool:
        """Holding the Lease, renewed less than `renew_deadline` ago."""
        return self._leading and time.monotonic() - self._renewed_at < self.renew_deadline

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info("%s leadership of Lease %s/%s (%s)", "acquired" if leading else "lost", self.namespace,
                     self.name, self.identity)
            self.on_change(leading)

    async def step(self) -> None:
        now = time.monotonic()
        lease = await self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
        if lease is not None:
            record = (
                lease["metadata"].get("resourceVersion", ""),
                (lease.get("spec") or {}).get("holderIdentity", ""),
            )
            if record != self._seen:
                self._seen, self._seen_since = record, now
        decision = decide(
            lease, self.identity, self.duration, self._seen_since, now, self.name, self.namespace
        )
        if decision.action == "follow" or decision.lease is None:
            self._set(False)
            return
        if decision.action == "create":
            created, _ = await self.kube.create(decision.lease)
            ok = created
        else:
            ok = await self.kube.replace(decision.lease) is not None
        if ok:
            self._renewed_at = now
        self._set(ok)

    async def run(self) -> None:
        while True:
            # A leader's attempt may last until its renew deadline; a follower's one deadline.
            left = self.renew_deadline - (time.monotonic() - self._renewed_at) if self._leading else 0.0
            try:
                await asyncio.wait_for(self.step(), max(left, 0.0) or self.renew_deadline)
            except TimeoutError:
                log.warning("leader election: no answer from the API server in time")
            except (ApiError, OSError) as e:
                log.warning("leader election: %s", e)
            if self._leading and not self.leading:
                log.warning("could not renew Lease %s/%s within %.1fs: stepping down", self.namespace,
                            self.name, self.renew_deadline)
                self._set(False)
            await asyncio.sleep(self.renew_every)

    async def release(self) -> None:
        """Give the Lease up on shutdown so the other replica takes over without waiting for expiry."""
        if not self._leading:
            return
        self._set(False)
        try:
            lease = await self.kube.get("coordination.k8s.io/v1", "Lease", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self.kube.replace(lease)
        except (ApiError, OSError) as e:
            log.warning("could not release the Lease: %s", e)
