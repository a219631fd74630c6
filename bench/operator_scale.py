"""Operator scale benchmark: N CritiqueRuns created at once against the test control plane.

Reports how fast every run gets its first Job (runs/s), the reconcile latency p50/p99 from the operator's
own `cai_reconcile_duration_seconds` histogram, the number of reconciles, and the operator's peak RSS.
Goal on 2 cores (apiserver, etcd, controller-manager, scheduler on the same cores): ≥ 50 runs/s,
p99 < 2 s, RSS < 300 MB.

    .venv/bin/python bench/operator_scale.py [--runs 500] [--placement pending|kwok|queued] [--shards N]

`--shards N` gives each run `resources.workers: N`: its first stage is an Indexed Job of N data-parallel
worker pods, and the benchmark also reports the time until every worker pod of every run exists.

Uses the cluster under CAI_CLUSTER_ROOT or .cache/cluster when one is up (`make cluster-up`), otherwise
starts one in a temporary directory for the run. By default the stage pods stay Pending (their
nodeSelector matches no node); `--placement kwok` lets the kwok node run them (scheduler, Job controller
and kwok then compete for the same cores); `--placement queued` creates the Jobs suspended for Kueue, so
no pods exist and the figures are the operator's and the apiserver's alone.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster import control_plane as cp
from tests.integration.operator_support import constitution_spec, install_crds


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """histogram_quantile over cumulative (upper bound, count) buckets, as Prometheus computes it."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / max(count - prev_count, 1e-9))
        prev_bound, prev_count = bound, count
    return prev_bound


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def histogram(text: str, name: str, kind: str) -> tuple[list[tuple[float, float]], float, float]:
    buckets, total, count = [], 0.0, 0.0
    for line in text.splitlines():
        m = re.match(rf'^{name}_bucket\{{kind="{kind}",le="([^"]+)"\}} (\S+)$', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
        m = re.match(rf'^{name}_(sum|count)\{{kind="{kind}"\}} (\S+)$', line)
        if m:
            if m.group(1) == "sum":
                total = float(m.group(2))
            else:
                count = float(m.group(2))
    return buckets, total, count


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--placement", choices=("pending", "kwok", "queued"), default="pending",
                    help="pending: pods never schedule (default); kwok: the kwok node runs them; "
                         "queued: runs name a Kueue queue, so Jobs are created suspended (no pods)")
    ap.add_argument("--shards", type=int, default=1, metavar="N",
                    help="resources.workers of each run: its generation stage is an Indexed Job of N pods")
    ap.add_argument("--clients", type=int, default=16, help="threads creating the runs")
    ap.add_argument("--workers", type=int, default=8, help="operator reconcile workers (CAI_WORKERS)")
    ap.add_argument("--profile", metavar="FILE", help="run the operator under cProfile, stats written to FILE")
    ap.add_argument("--priority", type=int, default=0, metavar="N",
                    help="renice the control plane, the operator and this client to -N during the run (root; "
                         "on a shared machine this approximates having the cores to ourselves)")
    args = ap.parse_args()

    root = Path(os.environ.get("CAI_CLUSTER_ROOT", cp.DEFAULT_ROOT))
    cluster = cp.Cluster.load(root)
    own_root = None
    if cluster is None or not cluster.healthy():
        own_root = Path(tempfile.mkdtemp(prefix="cai-bench-cluster-"))
        print(f"starting a test control plane in {own_root} ...", flush=True)
        cluster = cp.up(own_root, cp.bin_dir_default(), die_with_parent=True, owner="bench")
    kube, s3 = cluster.kube, cluster.s3
    install_crds(kube)
    _wait_namespaces_gone(kube)  # a previous run's namespace being deleted would load the same cores
    ns = f"bench-{secrets.token_hex(3)}"
    code, body = kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert code == 201, body
    base = f"/apis/cai.dev/v1alpha1/namespaces/{ns}"
    kube.request("POST", f"{base}/constitutions", {"apiVersion": "cai.dev/v1alpha1", "kind": "Constitution",
                                                   "metadata": {"name": "harmless"}, "spec": constitution_spec()})
    (metrics_port, health_port) = cp.free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "AWS_"))}
    env.update({"CAI_STORAGE_URI": f"s3://{s3.bucket}/{ns}", "CAI_S3_ENDPOINT": s3.endpoint,
                "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                "CAI_WORKERS": str(args.workers), "CAI_LOG_LEVEL": "WARNING"})
    log = open(Path(tempfile.gettempdir()) / f"cai-bench-operator-{ns}.log", "wb")  # noqa: SIM115 (open while the operator runs)
    prof = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    op = subprocess.Popen([sys.executable, *prof, "-m", "cai", "operator", f"--kubeconfig={kube.kubeconfig}",
                           f"--namespace={ns}", "--standalone", f"--metrics-port={metrics_port}",
                           f"--health-port={health_port}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or op.poll() is not None:
                raise SystemExit(f"operator did not become ready (log: {log.name})")
            time.sleep(0.2)
        while 'condition="Ready"' not in scrape(metrics_port):  # the Constitution is reconciled: warm
            time.sleep(0.2)
        idle_rss = _rss(op.pid)[0]

        placement = {"pending": {"nodeSelector": {"cai.dev/bench": "nowhere"}}, "kwok": cp.KWOK_PLACEMENT,
                     "queued": {"queueName": "bench"}}[args.placement]
        spec = {"constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random",
                "resources": {**placement, "workers": args.shards}}
        first_jobs: set[str] = set()
        done = threading.Event()
        watcher = threading.Thread(target=_watch_first_jobs, args=(kube, ns, args.runs, first_jobs, done), daemon=True)
        watcher.start()
        shard_pods: set[str] = set()
        pods_done = threading.Event()
        pods_at: list[float] = []
        if args.shards > 1:
            threading.Thread(target=_watch_shard_pods, daemon=True,
                             args=(kube, ns, args.runs * args.shards, shard_pods, pods_done, pods_at)).start()
        time.sleep(0.5)

        # One client with a connection pool, like kubectl or a GitOps controller applying many objects
        # (a new TLS handshake per object would load the apiserver more than the objects do).
        from kubernetes import client as k8s

        api_client = kube.api_client()
        api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = args.clients
        custom = k8s.CustomObjectsApi(api_client)

        def create(i: int) -> None:
            custom.create_namespaced_custom_object("cai.dev", "v1alpha1", ns, "critiqueruns", {
                "apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": f"run-{i:04d}"},
                "spec": spec})

        pids = {"operator": op.pid, "bench-client": os.getpid(),
                **{r["name"]: int(r["pid"]) for r in cluster.procs if cp.proc_alive(r)}}
        cpu0 = {k: _cpu_seconds(pid) for k, pid in pids.items()}
        if args.priority:
            for pid in pids.values():
                _renice_tree(pid, -args.priority)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(create, range(args.runs)))
        created = time.monotonic() - t0
        api_client.close()
        if not done.wait(timeout=600):
            raise SystemExit(f"only {len(first_jobs)} of {args.runs} runs got their first Job in 600 s (log: {log.name})")
        elapsed = time.monotonic() - t0
        if args.shards > 1 and not pods_done.wait(timeout=600):
            raise SystemExit(f"only {len(shard_pods)} of {args.runs * args.shards} worker pods in 600 s")
        cpu = {k: round(_cpu_seconds(pid) - cpu0[k], 1) for k, pid in pids.items()}
        cpu["all"] = round(sum(cpu.values()), 1)
        time.sleep(1.0)  # let the last status writes land in the histogram
        text = scrape(metrics_port)
        buckets, total, count = histogram(text, "cai_reconcile_duration_seconds", "CritiqueRun")
        rss_now, rss_peak = _rss(op.pid)
        result = {
            "runs": args.runs,
            "placement": args.placement,
            "create_seconds": round(created, 2),
            "all_first_jobs_seconds": round(elapsed, 2),
            "runs_per_second": round(args.runs / elapsed, 1),
            **({"shards_per_run": args.shards, "worker_pods": len(shard_pods),
                "all_worker_pods_seconds": round(pods_at[0] - t0, 2)} if args.shards > 1 else {}),
            "reconciles": int(count),
            "reconcile_mean_ms": round(1000 * total / count, 1) if count else None,
            "reconcile_p50_ms": round(1000 * quantile(buckets, 0.50), 1),
            "reconcile_p99_ms": round(1000 * quantile(buckets, 0.99), 1),
            "reconcile_errors": counter(text, "cai_reconcile_total", kind="CritiqueRun", result="error"),
            "reconcile_conflicts": counter(text, "cai_reconcile_total", kind="CritiqueRun", result="conflict"),
            "jobs_created": counter(text, "cai_jobs_created_total"),
            "operator_rss_idle_mib": round(idle_rss / 1024, 1),
            "operator_rss_now_mib": round(rss_now / 1024, 1),
            "operator_rss_peak_mib": round(rss_peak / 1024, 1),
            "cpu_seconds_during_burst": cpu,
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "priority": -args.priority,
        }
        print(json.dumps(result, indent=2))
        ok = result["runs_per_second"] >= 50 and result["reconcile_p99_ms"] < 2000 and result["operator_rss_peak_mib"] < 300
        print(f"goal (>= 50 runs/s, p99 < 2 s, RSS < 300 MB): {'met' if ok else 'NOT met'}")
        return 0
    finally:
        os.killpg(op.pid, signal.SIGTERM)
        op.wait(timeout=30)
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")
        _wait_namespaces_gone(kube)
        if own_root is not None:
            cp.down(own_root)


def _wait_namespaces_gone(kube, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, body = kube.request("GET", "/api/v1/namespaces")
        if not [n for n in body["items"] if n["metadata"]["name"].startswith("bench-")]:
            return
        time.sleep(1)


def _renice_tree(pid: int, niceness: int) -> None:
    """Set the niceness of every thread of `pid` (Linux applies it per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)
        except OSError:
            pass


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of a process, including its threads and waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> tuple[int, int]:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0])
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def _watch_first_jobs(kube, ns: str, n: int, seen: set[str], done: threading.Event) -> None:
    """Count runs whose first-stage Job exists."""
    _watch(kube, "list_namespaced_job", ns, n, seen, done, lambda obj: obj.metadata.labels["cai.dev/run"])


def _watch_shard_pods(kube, ns: str, n: int, seen: set[str], done: threading.Event, at: list[float]) -> None:
    """Count the worker pods of the runs' generation stages (the Job controller creates them); `at` gets the
    time the last one appeared."""
    _watch(kube, "list_namespaced_pod", ns, n, seen, done, lambda obj: obj.metadata.name, at)


def _watch(kube, lister: str, ns: str, n: int, seen: set[str], done: threading.Event, key,
           at: list[float] | None = None) -> None:
    """Add `key(object)` of the generation stage's Jobs or pods to `seen` until it holds `n` (then the time
    goes to `at`), from a watch (no polling load on the apiserver)."""
    from kubernetes import client, watch

    api = kube.api_client()
    list_fn = getattr(client.BatchV1Api(api) if "job" in lister else client.CoreV1Api(api), lister)
    rv = None
    while not done.is_set():
        try:
            w = watch.Watch()
            kwargs = {"resource_version": rv} if rv else {}
            for ev in w.stream(list_fn, ns, label_selector="cai.dev/stage=generate-revisions",
                               timeout_seconds=30, **kwargs):
                seen.add(key(ev["object"]))
                rv = ev["object"].metadata.resource_version
                if len(seen) >= n:
                    if at is not None:
                        at.append(time.monotonic())
                    done.set()
                    w.stop()
                    break
        except Exception:  # noqa: BLE001 — watch expired or connection reset: watch again
            rv = None
    api.close()


if __name__ == "__main__":
    sys.exit(main())
