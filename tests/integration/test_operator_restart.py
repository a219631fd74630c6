"""The operator killed (SIGKILL) and restarted at random points while runs are in flight, then two replicas
with leader election: no duplicate Jobs, every run completes, status and events stay consistent.

Where it sits: real control plane, kwok completing pods, `cai operator` subprocesses under the documented
RBAC (tests/integration/operator_support.py). A watch on Jobs records every Job ever created in the
namespace: a duplicate would show up as a second uid for a name or as an unexpected name.
"""
from __future__ import annotations

import collections
import os
import random
import threading
import time

import pytest

from tests.integration.operator_support import KWOK, Api, constitution_spec, until

pytestmark = pytest.mark.cluster

CHAIN_STAGES = {"CritiqueRun": ("generate-revisions", "finetune"),
                "PreferenceModel": ("sample-pairs", "label-preferences", "train-preference-model"),
                "RLAIFRun": ("train-policy", "evaluate")}
SUMMARY = {"CritiqueRun": "Succeeded", "PreferenceModel": "Ready", "RLAIFRun": "Succeeded"}


class JobRecorder:
    """Watches the namespace's Jobs from the start of the test: name -> uids ever seen."""

    def __init__(self, kube, namespace: str):
        from kubernetes import client, watch

        self.api_client = kube.api_client()
        self.batch = client.BatchV1Api(self.api_client)
        self.watch = watch.Watch()
        self.namespace = namespace
        self.uids: dict[str, set[str]] = collections.defaultdict(set)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rv = None
        while not self.stop.is_set():
            try:
                for ev in self.watch.stream(self.batch.list_namespaced_job, self.namespace, timeout_seconds=5,
                                            **({"resource_version": rv} if rv else {})):
                    meta = ev["object"].metadata
                    self.uids[meta.name].add(meta.uid)
                    rv = meta.resource_version
                    if self.stop.is_set():
                        break
            except Exception:  # noqa: BLE001 — watch expired (410) or connection reset: list again and carry on
                rv = None
                try:
                    for job in self.batch.list_namespaced_job(self.namespace).items:
                        self.uids[job.metadata.name].add(job.metadata.uid)
                except Exception:  # noqa: BLE001 — the apiserver is down (restarted by a test): try again
                    time.sleep(0.5)

    def close(self) -> None:
        self.stop.set()
        self.watch.stop()
        self.thread.join(timeout=10)
        self.api_client.close()


class Kueue:
    """Plays Kueue for runs with `queueName`: admits (unsuspends) one queued Job at a time, at random
    intervals, so the runs advance at a pace of the test's choosing whatever the operator is doing."""

    def __init__(self, api: Api, rng: random.Random, gap: tuple[float, float]):
        self.api, self.rng, self.gap = api, rng, gap
        self.admitted: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.rng.uniform(*self.gap)):
            queued = sorted(j["metadata"]["name"] for j in self.api.jobs() if j["spec"].get("suspend"))
            if queued:
                name = self.rng.choice(queued)
                self.api.kube.request("PATCH", f"/apis/batch/v1/namespaces/{self.api.ns}/jobs/{name}",
                                      {"spec": {"suspend": False}}, content_type="application/merge-patch+json")
                self.admitted.append(name)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def create_workload(api: Api, chains: int, singles: int, queue: str | None = None) -> dict[tuple[str, str], tuple[str, ...]]:
    """Chains CritiqueRun → PreferenceModel → RLAIFRun plus independent CritiqueRuns; returns expected stages."""
    api.create("Constitution", "harmless", constitution_spec())
    expected = {}
    resources = {**KWOK, **({"queueName": queue} if queue else {})}
    small = {"model": "builtin:tiny-random", "resources": resources}
    for i in range(chains):
        api.create("RLAIFRun", f"rl-{i}", {"policy": {"critiqueRunRef": {"name": f"sl-{i}"}}, "rewardModelRef": {"name": f"pm-{i}"},
                                          "resources": resources})
        api.create("PreferenceModel", f"pm-{i}", {"constitutionRef": {"name": "harmless"},
                                                  "policy": {"critiqueRunRef": {"name": f"sl-{i}"}}, "resources": resources})
        api.create("CritiqueRun", f"sl-{i}", {"constitutionRef": {"name": "harmless"}, **small})
        expected.update({("RLAIFRun", f"rl-{i}"): CHAIN_STAGES["RLAIFRun"],
                         ("PreferenceModel", f"pm-{i}"): CHAIN_STAGES["PreferenceModel"],
                         ("CritiqueRun", f"sl-{i}"): CHAIN_STAGES["CritiqueRun"]})
    for i in range(singles):
        api.create("CritiqueRun", f"solo-{i}", {"constitutionRef": {"name": "harmless"}, **small})
        expected[("CritiqueRun", f"solo-{i}")] = CHAIN_STAGES["CritiqueRun"]
    return expected


def assert_consistent(api: Api, expected: dict, recorder: JobRecorder) -> None:
    names = {f"{name}-{stage}" for (kind, name), stages in expected.items() for stage in stages}
    jobs = {j["metadata"]["name"] for j in api.jobs()}
    assert jobs == names, f"unexpected Jobs {jobs - names}, missing {names - jobs}"
    duplicates = {n: u for n, u in recorder.uids.items() if len(u) > 1}
    assert not duplicates, f"Jobs created more than once: {duplicates}"
    assert set(recorder.uids) == names
    created = collections.Counter(e["message"] for e in api.events() if e["reason"] == "JobCreated")
    assert max(created.values()) == 1, created  # "Created Job x" at most once per Job (lost if killed in between)
    transitions = collections.Counter((e["involvedObject"]["name"], e["reason"], e["message"]) for e in api.events()
                                      if e["reason"] in ("StageSucceeded", "Succeeded", "Ready"))
    assert max(transitions.values()) == 1, transitions
    for (kind, name), stages in expected.items():
        obj = api.get(kind, name)
        status = obj["status"]
        conds = {c["type"]: c for c in status["conditions"]}
        assert conds[SUMMARY[kind]]["status"] == "True", (name, conds)
        assert all(c["status"] == "True" for c in conds.values()), (name, conds)
        assert [s["name"] for s in status["stages"]] == list(stages), (name, status["stages"])
        assert all(s["completionTime"] and s["attempts"] == 1 and s["jobName"] == f"{name}-{s['name']}"
                   for s in status["stages"]), (name, status["stages"])
        assert status["observedGeneration"] == obj["metadata"]["generation"]
        assert status["constitutionDigest"] and all(status["outputs"].values())


def test_operator_killed_and_restarted_at_random_points(api, start_operator, kube_cluster, kube_namespace):
    seed = int(os.environ.get("CAI_TEST_SEED", time.time()))
    rng = random.Random(seed)
    print(f"seed {seed} (CAI_TEST_SEED reproduces the kill points)")
    recorder = JobRecorder(kube_cluster, kube_namespace)
    kueue = Kueue(api, random.Random(seed + 1), gap=(0.4, 1.4))
    try:
        op = start_operator()
        # Queued runs advance only as fast as the test admits their Jobs, so the kills below land at
        # every phase of the runs: before planning, between stages, with Jobs queued, running, finished.
        expected = create_workload(api, chains=4, singles=4, queue="paced")
        summaries = lambda: [(api.condition(k, n, SUMMARY[k]) or {}).get("status") for (k, n) in expected]
        kills: list[int] = []  # runs finished at each kill
        while sum(1 for k in kills if k < len(expected)) < 10 and len(kills) < 30:
            # Half the kills land during start-up (before or while the operator lists and indexes),
            # half while it works, at a random moment after its first reconcile.
            if len(kills) % 2:
                until("operator reconciling", lambda: op.ready() and op.metric("cai_reconcile_total") > 0,
                      timeout=60, on_timeout=op.log_tail)
                time.sleep(rng.uniform(0.1, 2.0))
            else:
                time.sleep(rng.uniform(0.5, 4.0))
            done = summaries().count("True")
            op.kill()  # SIGKILL: no cleanup, whatever was in flight is lost
            kills.append(done)
            op.start(wait=False)
        print(f"killed {len(kills)} times; runs finished (of {len(expected)}) at each kill: {kills}; "
              f"Jobs admitted: {len(kueue.admitted)}")
        assert sum(1 for k in kills if k < len(expected)) >= 10, "fewer than 10 kills landed while runs were in flight"
        until("operator ready", op.ready, timeout=60, on_timeout=op.log_tail)
        for (kind, name) in expected:
            api.wait_condition(kind, name, SUMMARY[kind], "True", timeout=180, log=op.log_tail)
        assert_consistent(api, expected, recorder)
    finally:
        kueue.close()
        recorder.close()


def test_two_replicas_only_the_leader_acts_and_the_other_takes_over(api, start_operator, kube_cluster, kube_namespace):
    from tests.integration.operator_support import grant_lease_role

    grant_lease_role(kube_cluster, kube_namespace)
    recorder = JobRecorder(kube_cluster, kube_namespace)
    try:
        a = start_operator("replica-a", standalone=False, env={"POD_NAME": "replica-a"})
        until("replica-a leads", lambda: a.metric("cai_leader") == 1, timeout=30, on_timeout=a.log_tail)
        b = start_operator("replica-b", standalone=False, env={"POD_NAME": "replica-b"})
        lease = until("Lease", lambda: kube_cluster.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases/cai-operator")[1])
        assert lease["spec"]["holderIdentity"] == "replica-a"

        expected = create_workload(api, chains=1, singles=3)
        first = dict(expected)
        for (kind, name) in first:
            api.wait_condition(kind, name, SUMMARY[kind], "True", timeout=90, log=a.log_tail)
        # Only the leader acted: every JobCreated event was reported by replica-a; b created nothing.
        reporters = {e.get("reportingInstance") for e in api.events() if e["reason"] == "JobCreated"}
        assert reporters == {"replica-a"}
        assert b.metric("cai_leader") == 0 and b.metric("cai_jobs_created_total") == 0
        assert b.metric("cai_reconcile_total", result="ok") == 0 and b.metric("cai_reconcile_total", result="skipped") > 0
        assert a.metric("cai_jobs_created_total") == sum(len(s) for s in first.values())

        # The leader dies without releasing the Lease: the standby takes over once it expires (4 s here).
        a.kill()
        killed_at = time.monotonic()
        more = {("CritiqueRun", f"late-{i}"): CHAIN_STAGES["CritiqueRun"] for i in range(3)}
        for (_, name) in more:
            api.create("CritiqueRun", name, {"constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random",
                                             "resources": KWOK})
        until("replica-b leads", lambda: b.metric("cai_leader") == 1, timeout=30, on_timeout=b.log_tail)
        took_over = time.monotonic() - killed_at
        for (kind, name) in more:
            api.wait_condition(kind, name, SUMMARY[kind], "True", timeout=60, log=b.log_tail)
        print(f"standby took over {took_over:.1f}s after the leader was killed")
        assert took_over < 15
        assert {e.get("reportingInstance") for e in api.events() if e["reason"] == "JobCreated"
                and e["involvedObject"]["name"].startswith("late-")} == {"replica-b"}
        assert_consistent(api, {**expected, **more}, recorder)
        # A replica shutting down cleanly hands the Lease over at once.
        a2 = start_operator("replica-a2", standalone=False, env={"POD_NAME": "replica-a"})
        b.stop()
        until("replica-a2 leads after b released the Lease", lambda: a2.metric("cai_leader") == 1, timeout=10,
              on_timeout=a2.log_tail)
    finally:
        recorder.close()
