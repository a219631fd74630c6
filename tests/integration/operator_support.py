"""Helpers for tests that run the operator against the real test control plane (no mocks).

Where it sits: imported by tests/integration/test_operator_*.py and tests/e2e/. Provides:

* `install_crds(kube)` — crds/*.yaml applied server-side (idempotent, shared by the session);
* `operator_kubeconfig(kube, tmp)` — a ServiceAccount bound to exactly the RBAC of `cai.controller.rbac`
  (docs/rbac.md) and a kubeconfig with its token: the operator under test never runs as admin, so a
  permission it lacks — or a Secret it tries to read — fails the test;
* `OperatorProcess` — `cai operator` as a subprocess (kill -9, restart, scrape /metrics);
* `Api` — small JSON helpers on the admin connection: create/get/patch resources, wait for conditions,
  list Jobs and events;
* `KwokPublisher` — what kwok cannot do: kwok completes stage pods without running them, and the operator
  lets a stage succeed only when its artifact's manifest is in storage. Runs placed with `KWOK` carry a
  scheduling gate; the publisher writes the manifest the stage would have written to MinIO, then lifts the
  gate, so kwok completes the pod only once its artifact exists (no race with the operator).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cai.api.kinds import KINDS
from cai.controller import rbac
from tests.cluster.control_plane import KWOK_PLACEMENT, REPO, KubeCluster, free_ports

API = "cai.dev/v1alpha1"
OPERATOR_SA_NAMESPACE = "cai-operator-tests"
OPERATOR_SA = "cai-operator"


def until(what: str, fn: Callable[[], Any], timeout: float = 60.0, every: float = 0.25,
          on_timeout: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
        time.sleep(every)


def install_crds(kube: KubeCluster) -> None:
    files = sorted((REPO / "crds").glob("*.yaml"))
    kube.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=cai-tests",
                 *(f"--filename={p}" for p in files))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in files]
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))


def _ensure(kube: KubeCluster, path: str, obj: dict) -> None:
    code, body = kube.request("POST", path, obj)
    if code == 409:
        code, body = kube.request("PUT", f"{path}/{obj['metadata']['name']}", obj)
    assert code in (200, 201), (path, code, body)


def operator_kubeconfig(kube: KubeCluster, directory: Path, lease_namespaces: tuple[str, ...] = ()) -> Path:
    """A kubeconfig for a ServiceAccount holding only the operator's documented RBAC."""
    ns = OPERATOR_SA_NAMESPACE
    code, _ = kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert code in (201, 409)
    _ensure(kube, f"/api/v1/namespaces/{ns}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": ns}})
    _ensure(kube, "/apis/rbac.authorization.k8s.io/v1/clusterroles", rbac.cluster_role("cai-operator-test"))
    subject = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": ns}]
    _ensure(kube, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "cai-operator-test"}, "subjects": subject,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cai-operator-test"}})
    for lease_ns in lease_namespaces:
        grant_lease_role(kube, lease_ns)
    code, tok = kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{OPERATOR_SA}/token",
                             {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                              "spec": {"expirationSeconds": 86400}})
    assert code == 201, tok
    ca = base64.b64encode(Path(kube.ca_file).read_bytes()).decode()
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "op",
           "clusters": [{"name": "c", "cluster": {"server": kube.server, "certificate-authority-data": ca}}],
           "users": [{"name": "op", "user": {"token": tok["status"]["token"]}}],
           "contexts": [{"name": "op", "context": {"cluster": "c", "user": "op"}}]}
    path = directory / "operator.kubeconfig"
    path.write_text(json.dumps(cfg))
    return path


def grant_lease_role(kube: KubeCluster, namespace: str) -> None:
    role = rbac.lease_role(namespace)
    _ensure(kube, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", role)
    _ensure(kube, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": role["metadata"]["name"], "namespace": namespace},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_SA_NAMESPACE}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}})


class OperatorProcess:
    """`cai operator` in a subprocess with its own metrics/health ports and log file."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], env: dict[str, str], log_dir: Path,
                 standalone: bool = True, name: str = "operator"):
        self.kubeconfig, self.namespaces, self.env, self.standalone = kubeconfig, namespaces, env, standalone
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.metrics_port, self.health_port = free_ports(2)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> OperatorProcess:
        argv = [sys.executable, "-m", "cai", "operator", f"--kubeconfig={self.kubeconfig}",
                f"--metrics-port={self.metrics_port}", f"--health-port={self.health_port}",
                *(f"--namespace={n}" for n in self.namespaces)]
        if self.standalone:
            argv.append("--standalone")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAI_", "KUBECONFIG"))}
        env.update(self.env)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts} {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)
        self.starts += 1
        if wait:
            until(f"{self.name} ready", self.ready, timeout=60, on_timeout=self.log_tail)
        return self

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
        return self._get(self.health_port, "/readyz")[0] == 200

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> str:
        code, text = self._get(self.metrics_port, "/metrics")
        assert code == 200, f"/metrics answered {code}"
        return text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        total = 0.0
        for line in self.metrics().splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not m or m.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def peak_rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Api:
    """JSON helpers for the test's namespace, as the cluster admin."""

    def __init__(self, kube: KubeCluster, namespace: str):
        self.kube, self.ns = kube, namespace

    def path(self, kind: str, name: str | None = None) -> str:
        base = f"/apis/{API}/namespaces/{self.ns}/{KINDS[kind].plural}"
        return f"{base}/{name}" if name else base

    def create(self, kind: str, name: str, spec: dict, labels: dict | None = None) -> dict:
        doc = {"apiVersion": API, "kind": kind, "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
        code, body = self.kube.request("POST", self.path(kind), doc)
        assert code == 201, (code, body)
        return body

    def create_raw(self, doc: dict) -> tuple[int, Any]:
        return self.kube.request("POST", self.path(doc["kind"]), doc)

    def apply_file(self, path: Path) -> None:
        self.kube.kubectl("apply", "-n", self.ns, "-f", str(path))

    def get(self, kind: str, name: str) -> dict | None:
        code, body = self.kube.request("GET", self.path(kind, name))
        return body if code == 200 else None

    def patch(self, kind: str, name: str, patch: dict) -> dict:
        code, body = self.kube.request("PATCH", self.path(kind, name), patch, content_type="application/merge-patch+json")
        assert code == 200, (code, body)
        return body

    def delete(self, kind: str, name: str) -> None:
        self.kube.request("DELETE", self.path(kind, name))

    def condition(self, kind: str, name: str, type_: str) -> dict | None:
        obj = self.get(kind, name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)

    def wait_condition(self, kind: str, name: str, type_: str, status: str, reason: str | None = None,
                       timeout: float = 90.0, log: Callable[[], str] = lambda: "") -> dict:
        def check():
            c = self.condition(kind, name, type_)
            return c if c and c["status"] == status and (reason is None or c["reason"] == reason) else None
        return until(f"{kind}/{name} {type_}={status}{f' ({reason})' if reason else ''}", check, timeout,
                     on_timeout=lambda: f"now: {self.condition(kind, name, type_)}\n{log()}")

    def jobs(self) -> list[dict]:
        code, body = self.kube.request("GET", f"/apis/batch/v1/namespaces/{self.ns}/jobs")
        assert code == 200, body
        return body["items"]

    def job(self, name: str) -> dict | None:
        code, body = self.kube.request("GET", f"/apis/batch/v1/namespaces/{self.ns}/jobs/{name}")
        return body if code == 200 else None

    def core(self, resource: str, name: str | None = None) -> Any:
        code, body = self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/{resource}" + (f"/{name}" if name else ""))
        return body if code == 200 else None

    def events(self, name: str | None = None) -> list[dict]:
        items = (self.core("events") or {}).get("items") or []
        items = [e for e in items if e["involvedObject"].get("apiVersion") == API]
        if name:
            items = [e for e in items if e["involvedObject"]["name"] == name]
        return sorted(items, key=lambda e: (e.get("lastTimestamp") or "", e["metadata"].get("creationTimestamp") or ""))

    def secret(self, name: str, data: dict[str, str]) -> None:
        code, body = self.kube.request("POST", f"/api/v1/namespaces/{self.ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
        assert code == 201, body


def constitution_spec() -> dict:
    return yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())["spec"]


PUBLISH_GATE = "cai.dev/test-publish"  # a scheduling gate KwokPublisher lifts after publishing
# Pods the kwok node completes, once KwokPublisher has published their artifact.
# (With a real node, KWOK_PLACEMENT's toleration lets them onto the tainted kwok node.)
KWOK = {**KWOK_PLACEMENT, "podTemplate": {"spec": {"schedulingGates": [{"name": PUBLISH_GATE}]}}}


class KwokPublisher:
    """Publishes the artifact (manifest.json and one file) of each gated stage pod, then lifts its gate.

    The manifest is the one the stage would write: `inputsDigest` from the stage's frozen spec (the run's
    ConfigMap) and the digests of its input manifests. Pods of runs named in `skip` get their gate lifted
    without a manifest (a stage that exits 0 without publishing); while `paused` is set, pods stay gated.
    """

    def __init__(self, kube: KubeCluster, s3, namespace: str):
        self.kube, self.s3, self.ns = kube, s3, namespace
        self.fs = s3.filesystem()
        self.skip: set[str] = set()
        self.paused = threading.Event()  # set: pods stay gated (runs wait mid-way)
        self.published: list[str] = []
        self.errors: list[str] = []
        self._done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kwok-publisher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            if self.paused.is_set():
                continue
            code, body = self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/pods?labelSelector=cai.dev/run")
            if code != 200:
                continue
            for pod in body.get("items") or []:
                gates = [g["name"] for g in pod["spec"].get("schedulingGates") or []]
                if PUBLISH_GATE in gates and pod["metadata"]["uid"] not in self._done:
                    try:
                        self._publish(pod)
                    except Exception as e:  # noqa: BLE001 — shown by the test that waits on the run
                        self.errors.append(f"{pod['metadata']['name']}: {type(e).__name__}: {e}")
                        continue
                    self._done.add(pod["metadata"]["uid"])
                    self._lift(pod, [g for g in gates if g != PUBLISH_GATE])

    def _publish(self, pod: dict) -> None:
        from cai import __version__
        from cai.pipeline.stagespec import StageSpec

        if pod["metadata"]["labels"]["cai.dev/run"] in self.skip:
            return
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "stage-spec")["configMap"]
        code, cm = self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/configmaps/{volume['name']}")
        assert code == 200, cm
        spec = StageSpec.model_validate_json(cm["data"][volume["items"][0]["key"]])
        out = spec.output.removeprefix("s3://")
        if self.fs.exists(f"{out}/manifest.json"):  # a retried pod: published already
            return
        inputs = {role: hashlib.sha256(self.fs.cat(f"{uri.removeprefix('s3://')}/manifest.json")).hexdigest()
                  for role, uri in spec.inputs.items() if uri}
        data = b'{"kwok": true}\n'
        self.fs.pipe(f"{out}/data.jsonl", data)
        manifest = {"schemaVersion": 1, "kind": "dataset",
                    "producer": {"kind": spec.kind, "name": spec.name, "namespace": spec.namespace,
                                 "stage": spec.stage, "version": __version__},
                    "inputs": [{"role": r, "uri": spec.inputs[r], "sha256": d} for r, d in inputs.items()],
                    "inputsDigest": spec.digest(inputs),
                    "files": [{"path": "data.jsonl", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}],
                    "metrics": {"durationSeconds": 0.5}, "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.fs.pipe(f"{out}/manifest.json", json.dumps(manifest).encode())
        self.published.append(spec.output)

    def _lift(self, pod: dict, rest: list[str]) -> None:
        code, body = self.kube.request(
            "PATCH", f"/api/v1/namespaces/{self.ns}/pods/{pod['metadata']['name']}",
            {"spec": {"schedulingGates": [{"name": g} for g in rest]}},
            content_type="application/strategic-merge-patch+json" if rest else "application/merge-patch+json")
        if code not in (200, 404):
            self.errors.append(f"lifting the gate of {pod['metadata']['name']}: HTTP {code}: {body}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# ------------------------------------------------------------------------------------------ fixtures
# Imported by tests/integration/conftest.py and tests/e2e/conftest.py.
import pytest


@pytest.fixture(scope="session")
def cai_crds(kube_cluster):
    install_crds(kube_cluster)


@pytest.fixture(scope="session")
def operator_sa_kubeconfig(kube_cluster, tmp_path_factory) -> Path:
    return operator_kubeconfig(kube_cluster, tmp_path_factory.mktemp("operator-sa"))


@pytest.fixture
def api(kube_cluster, kube_namespace, cai_crds) -> Api:
    return Api(kube_cluster, kube_namespace)


@pytest.fixture
def operator_env(s3_server, kube_namespace) -> dict[str, str]:
    """The operator's environment (the Helm chart's contract) for a test namespace."""
    return {
        "CAI_STAGE_IMAGE": "cai-trainer:test", "CAI_STAGE_IMAGE_GPU": "cai-trainer-gpu:test",
        "CAI_STORAGE_URI": f"s3://{s3_server.bucket}/{kube_namespace}", "CAI_S3_ENDPOINT": s3_server.endpoint,
        "CAI_STORAGE_SECRET": "cai-s3", "CAI_JOB_TTL_SECONDS": "3600",
        # The operator reads stage manifests with its own credentials (never from the Secret).
        "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region, "CAI_LEASE_NAMESPACE": kube_namespace,
        "CAI_LEASE_DURATION_SECONDS": "4", "CAI_LEASE_RENEW_SECONDS": "0.5",
    }


@pytest.fixture
def kwok_publisher(kube_cluster, s3_server, kube_namespace):
    publisher = KwokPublisher(kube_cluster, s3_server, kube_namespace)
    yield publisher
    publisher.close()
    assert not publisher.errors, publisher.errors


@pytest.fixture
def start_operator(request, operator_sa_kubeconfig, kube_namespace, operator_env, tmp_path, kwok_publisher):
    """Factory: start `cai operator` processes for this namespace; all are stopped after the test."""
    started: list[OperatorProcess] = []

    def start(name: str = "operator", standalone: bool = True, env: dict[str, str] | None = None,
              wait: bool = True, kubeconfig: Path | None = None) -> OperatorProcess:
        op = OperatorProcess(kubeconfig or operator_sa_kubeconfig, [kube_namespace], {**operator_env, **(env or {})},
                             tmp_path, standalone=standalone, name=name)
        started.append(op)
        return op.start(wait=wait)

    yield start
    for op in started:
        op.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for op in started:
            print(f"\n--- {op.name} log ({op.log_path}) ---\n{op.log_tail(120)}")
