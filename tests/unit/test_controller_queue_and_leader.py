"""The operator's work queue (coalescing, one worker per key, delays) and the Lease decision (pure)."""

from __future__ import annotations

import asyncio

from cai.controller.leader import decide
from cai.controller.workqueue import WorkQueue


def test_queue_coalesces_and_never_hands_out_a_key_twice_at_once():
    async def scenario():
        q: WorkQueue[str] = WorkQueue()
        q.add("a"); q.add("a"); q.add("b")
        assert len(q) == 2
        k = await q.get()
        assert k == "a"
        q.add("a")  # arrives while "a" is processed: marked dirty, not queued
        assert len(q) == 1
        assert await q.get() == "b"
        q.done("b")
        q.done("a")  # dirty: back on the queue once
        assert len(q) == 1 and await q.get() == "a"
        q.done("a")
        q.add_after("c", 0.05)
        q.add_after("c", 10)  # later time does not push the earlier one back
        assert await asyncio.wait_for(q.get(), 1) == "c"
        q.done("c")
        q.add_after("d", 10)
        q.add("d")  # an event supersedes a pending delay
        assert await asyncio.wait_for(q.get(), 1) == "d"
        assert q.add_rate_limited("e", base=0.01) == 0.01
        assert q.add_rate_limited("e", base=0.01) == 0.02
        q.forget("e")
        assert q.add_rate_limited("e", base=0.01) == 0.01
        q.close()

    asyncio.run(scenario())


def lease(holder, rv="1", duration=15):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "leaseTransitions": 2}}


def test_lease_decisions():
    assert decide(None, "me", 15, None, 0, "l", "ns").action == "create"
    renew = decide(lease("me"), "me", 15, 0, 100, "l", "ns")
    assert renew.action == "renew" and renew.lease["metadata"]["resourceVersion"] == "1"
    # Another holder whose record we have seen unchanged for less than its duration: follow.
    assert decide(lease("other"), "me", 15, observed_since=90, now=100, name="l", namespace="ns").action == "follow"
    # ... for at least its duration (judged on our own clock): it is expired, take it over.
    took = decide(lease("other"), "me", 15, observed_since=80, now=100, name="l", namespace="ns")
    assert took.action == "acquire" and took.lease["spec"]["holderIdentity"] == "me"
    assert took.lease["spec"]["leaseTransitions"] == 3
    # Released (empty holder): take it at once.
    assert decide(lease(""), "me", 15, observed_since=100, now=100, name="l", namespace="ns").action == "acquire"


def test_renew_deadline_sits_between_the_renew_period_and_the_lease():
    import pytest

    from cai.controller.config import ConfigError, OperatorConfig

    assert OperatorConfig.from_env({}).lease_renew_deadline_seconds == 10.0  # client-go's 10 s of 15 s
    cfg = OperatorConfig.from_env({"CAI_LEASE_DURATION_SECONDS": "4", "CAI_LEASE_RENEW_SECONDS": "0.5"})
    assert 0.5 < cfg.lease_renew_deadline_seconds < 4
    for bad in ({"CAI_LEASE_RENEW_DEADLINE_SECONDS": "15"}, {"CAI_LEASE_RENEW_DEADLINE_SECONDS": "1"}):
        with pytest.raises(ConfigError, match="CAI_LEASE_RENEW_DEADLINE_SECONDS"):
            OperatorConfig.from_env(bad)
