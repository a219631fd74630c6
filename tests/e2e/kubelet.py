"""A test kubelet: runs the pods bound to one Node (`cai-e2e-node`) as local processes and reports status.

Where it sits: the e2e tests' stand-in for a real node. kwok completes pods without running anything;
this fixture really runs them, so a run's stage pods execute `cai stage …` (or torchrun) here, read their
spec from the mounted ConfigMap, get S3 credentials through secretKeyRef, write artifacts to the test's
MinIO, and report exit codes and termination messages back to the apiserver like a kubelet does.

What it implements of a kubelet, and how:

* Node: created Ready with a taint (`cai.dev/e2e=true:NoSchedule`) and label so only pods that ask land here.
* Pods: watched by `spec.nodeName`; each new pod runs once (restartPolicy Never) as a process group.
* Env: `value` (with `$(VAR)` expansion), `secretKeyRef`, `configMapKeyRef`, `fieldRef` (name, namespace,
  uid, labels, annotations — e.g. the Job's completion index, nodeName, podIP), as the kubelet resolves them.
* Volumes: configMap (items or all keys) and emptyDir become directories; a container path under a mount
  (the `--spec /etc/cai/spec.json` argument) is rewritten to the directory. `/dev/termination-log` becomes a
  file whose content is the termination message (`FallbackToLogsOnError`: the log tail when empty).
* DNS: `<hostname>.<subdomain>` of pods on this node resolve to 127.0.0.1 (all pods share the host), so
  torchrun's rank 0 is reachable at `MASTER_ADDR=<job>-0.<service>`.
* Images: the command runs in this checkout's virtualenv (`cai` → `python -m cai`, `torchrun` → the venv's).
* Status: Running with startTime/podIP, then Succeeded/Failed with the container's terminated state.
  Deleted pods (Job suspended or finished) have their process killed and are removed (grace period 0).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.control_plane import E2E_NODE, KubeCluster

TAINT = {"key": "cai.dev/e2e", "value": "true", "effect": "NoSchedule"}
NODE_LABEL = ("cai.dev/e2e-node", "true")
# What a run's `resources` must say for its pods to land on this node.
POD_PLACEMENT = {"nodeSelector": {NODE_LABEL[0]: NODE_LABEL[1]},
                 "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]}
VENV_BIN = Path(sys.executable).parent


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    dir: Path
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.dir / "container.log"


class LocalKubelet:
    def __init__(self, kube: KubeCluster, workdir: Path, node: str = E2E_NODE, extra_env: dict[str, str] | None = None):
        self.kube, self.node, self.workdir = kube, node, workdir
        self.extra_env = extra_env or {}
        self.runs: dict[str, PodRun] = {}  # pod uid -> run
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.watcher: threading.Thread | None = None
        self.errors: list[str] = []

    # ---- lifecycle

    def start(self) -> LocalKubelet:
        self.kube.create_node(self.node, labels={NODE_LABEL[0]: NODE_LABEL[1]}, taints=[TAINT])
        self.watcher = threading.Thread(target=self._watch, name="local-kubelet", daemon=True)
        self.watcher.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            self._kill(run)
        if self.watcher is not None:
            self.watcher.join(timeout=10)
        # Pods still bound here would stay Terminating forever (no kubelet to confirm), and with them
        # their namespaces: remove them as a kubelet shutting down its node for good would.
        code, body = self.kube.request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node}")
        for pod in (body or {}).get("items", []) if code == 200 else []:
            meta = pod["metadata"]
            self.kube.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                              {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})

    # ---- the pod loop

    def _watch(self) -> None:
        from kubernetes import client, watch

        api_client = self.kube.api_client()
        core = client.CoreV1Api(api_client)
        selector = f"spec.nodeName={self.node}"
        while not self.stop_event.is_set():
            try:
                w = watch.Watch()
                for ev in w.stream(core.list_pod_for_all_namespaces, field_selector=selector, timeout_seconds=5):
                    pod = api_client.sanitize_for_serialization(ev["object"])
                    self._handle(ev["type"], pod)
                    if self.stop_event.is_set():
                        w.stop()
                        break
            except Exception as e:  # noqa: BLE001 — keep the node alive through watch expiry and connection resets
                if not self.stop_event.is_set():
                    self.errors.append(f"watch: {type(e).__name__}: {e}")
                    time.sleep(0.5)
        api_client.close()

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if kind == "DELETED":
            with self.lock:
                run = self.runs.get(uid)
            if run is not None:
                self._kill(run)
            return
        if meta.get("deletionTimestamp"):
            with self.lock:
                run = self.runs.get(uid)
            if run is not None:
                self._kill(run)
            # The kubelet's last word on a deleted pod: remove it for good.
            self.kube.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                              {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                               "preconditions": {"uid": uid}})
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        with self.lock:
            if uid in self.runs or phase != "Pending":
                return
            run = PodRun(meta["namespace"], meta["name"], uid,
                         self.workdir / meta["namespace"] / f"{meta['name']}-{uid[:8]}")
            self.runs[uid] = run
        run.thread = threading.Thread(target=self._run_pod, args=(run, pod), name=f"pod-{meta['name']}", daemon=True)
        run.thread.start()

    # ---- running one pod

    def _get(self, path: str) -> dict[str, Any]:
        code, body = self.kube.request("GET", path)
        if code != 200:
            raise RuntimeError(f"GET {path}: HTTP {code}: {body}")
        return body

    def _volumes(self, pod: dict[str, Any], run: PodRun) -> dict[str, Path]:
        ns = run.namespace
        out: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            path = run.dir / "volumes" / vol["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                cm = self._get(f"/api/v1/namespaces/{ns}/configmaps/{vol['configMap']['name']}")
                data = cm.get("data") or {}
                items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
            out[vol["name"]] = path
        return out

    def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = _expand(var["value"], env)
                continue
            src = var.get("valueFrom") or {}
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                secret = self._get(f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                env[var["name"]] = self._get(f"/api/v1/namespaces/{ns}/configmaps/{ref['name']}")["data"][ref["key"]]
            elif "fieldRef" in src:
                env[var["name"]] = _field(pod, src["fieldRef"]["fieldPath"])
            else:
                raise RuntimeError(f"unsupported env source for {var['name']}: {src}")
        # Cluster DNS for pods of this node: <hostname>.<subdomain>[.<ns>.svc...] → loopback.
        subdomain = pod["spec"].get("subdomain")
        if subdomain:
            pattern = re.compile(rf"^[a-z0-9-]+\.{re.escape(subdomain)}(\.{re.escape(ns)}(\.svc(\.cluster\.local)?)?)?$")
            env = {k: ("127.0.0.1" if pattern.match(v) else v) for k, v in env.items()}
        return env

    def _command(self, container: dict[str, Any], env: dict[str, str], mounts: list[tuple[str, Path]]) -> list[str]:
        argv = [_expand(a, env) for a in (container.get("command") or []) + (container.get("args") or [])]

        def host_path(arg: str) -> str:
            for mount, path in mounts:
                if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
                    return str(path) + arg[len(mount.rstrip("/")):]
            for prefix in ("--spec=",):
                if arg.startswith(prefix):
                    return prefix + host_path(arg[len(prefix):])
            return arg

        argv = [host_path(a) for a in argv]
        exe = {"cai": [sys.executable, "-m", "cai"], "torchrun": [str(VENV_BIN / "torchrun")],
               "python": [sys.executable], "python3": [sys.executable]}
        return exe.get(argv[0], [argv[0]]) + argv[1:]

    def _run_pod(self, run: PodRun, pod: dict[str, Any]) -> None:
        try:
            self._run_pod_inner(run, pod)
        except Exception as e:  # noqa: BLE001 — report to the apiserver like a kubelet that cannot start the container
            self.errors.append(f"{run.namespace}/{run.name}: {type(e).__name__}: {e}")
            self._patch_status(run, pod, phase="Failed", exit_code=128, reason="ContainerCannotRun",
                               message=f"{type(e).__name__}: {e}", started=_now())

    def _run_pod_inner(self, run: PodRun, pod: dict[str, Any]) -> None:
        run.dir.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(pod, run)
        container = pod["spec"]["containers"][0]
        mounts = [(m["mountPath"], volumes[m["name"]]) for m in container.get("volumeMounts") or [] if m["name"] in volumes]
        env = self._env(pod, container)
        termination = run.dir / "termination-log"
        termination.write_text("")
        argv = self._command(container, env, mounts)
        proc_env = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8", "TMPDIR": str(run.dir / "tmp"),
            # The image's caches: the host's, so builtin models prepared once are reused.
            **{k: v for k, v in os.environ.items() if k in ("CAI_CACHE_DIR", "HF_HOME", "UV_CACHE_DIR", "TORCH_HOME")},
            **self.extra_env, **env,
            "CAI_TERMINATION_LOG": str(termination),
            "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
        }
        (run.dir / "tmp").mkdir(exist_ok=True)
        (run.dir / "argv.json").write_text(json.dumps(argv))
        started = _now()
        with open(run.log, "wb") as log:
            run.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=proc_env, cwd=run.dir,
                                        start_new_session=True)
        self._patch_status(run, pod, phase="Running", started=started)
        code = run.proc.wait()
        if self.stop_event.is_set():
            return
        message = termination.read_text(errors="replace").strip()
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = "\n".join(run.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
        self._patch_status(run, pod, phase="Succeeded" if code == 0 else "Failed", exit_code=code,
                           reason="Completed" if code == 0 else "Error", message=message, started=started)

    def _patch_status(self, run: PodRun, pod: dict[str, Any], *, phase: str, started: str, exit_code: int | None = None,
                      reason: str = "", message: str = "") -> None:
        container = pod["spec"]["containers"][0]
        running = phase == "Running"
        state = ({"running": {"startedAt": started}} if running else
                 {"terminated": {"exitCode": exit_code, "reason": reason, "message": message[-4096:],
                                 "startedAt": started, "finishedAt": _now(),
                                 "containerID": f"local://{run.proc.pid if run.proc else 0}"}})
        conds = [{"type": t, "status": "True" if (running or t == "PodScheduled" or t == "Initialized") else "False",
                  "lastTransitionTime": _now()} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        status = {"status": {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": started, "conditions": conds,
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "local",
                                   "ready": running, "started": running, "restartCount": 0, "state": state,
                                   "containerID": f"local://{run.proc.pid if run.proc else 0}"}]}}
        code, body = self.kube.request("PATCH", f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status", status,
                                       content_type="application/merge-patch+json")
        if code not in (200, 404):
            self.errors.append(f"status of {run.namespace}/{run.name}: HTTP {code}: {body}")

    def _kill(self, run: PodRun) -> None:
        if run.proc is not None and run.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGTERM)
            try:
                run.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.proc.pid, signal.SIGKILL)

    # ---- for tests

    def pod_logs(self, namespace: str, prefix: str = "") -> dict[str, str]:
        with self.lock:
            runs = [r for r in self.runs.values() if r.namespace == namespace and r.name.startswith(prefix)]
        return {r.name: r.log.read_text(errors="replace") if r.log.exists() else "" for r in runs}

    def describe(self, namespace: str) -> str:
        """Errors and the log tails of this namespace's pods (for assertion messages)."""
        parts = [f"kubelet errors: {self.errors}"] if self.errors else []
        for name, log in sorted(self.pod_logs(namespace).items()):
            parts.append(f"--- pod {name} ---\n" + "\n".join(log.splitlines()[-25:]))
        return "\n".join(parts)

    def cleanup_dirs(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes; unknown references stay as written)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    m = re.match(r"^metadata\.(labels|annotations)\['([^']+)'\]$", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": pod["spec"].get("nodeName", ""), "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
              "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    if path not in simple:
        raise RuntimeError(f"unsupported fieldRef {path}")
    return simple[path]
