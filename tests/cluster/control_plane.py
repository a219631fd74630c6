"""The test control plane: real Kubernetes (with a real node), S3 and Prometheus as local processes.

Where it sits: ``tests/cluster/build.sh`` (``make cluster``) builds the binaries into a cache and links
them at ``.cache/cluster/bin``; this module starts and stops them. It is the one implementation used by
``make cluster-up`` / ``make cluster-down`` (``python -m tests.cluster.control_plane up|down|status``)
and by the pytest fixtures in ``tests/cluster/fixtures.py``. The node's own part (network namespace,
containerd, kubelet, kube-proxy, CoreDNS, teardown) is ``tests/cluster/node.py``.

What ``up`` starts (each its own process, logs in ``<root>/logs/<name>.log``):

* etcd (v3.6, watch progress) on a free port, no fsync;
* kube-apiserver with TLS (a throw-away CA made here), token auth (``<root>/pki/tokens.csv``: an admin in
  ``system:masters``, and the controller-manager, scheduler, kwok, kubelet, kube-proxy and CoreDNS
  identities), RBAC+Node authorization, service-account issuer and keys -- the flags envtest uses;
* kube-controller-manager with the controllers in CONTROLLERS (no node-lifecycle controller, so
  hand-made Nodes stay Ready);
* kube-scheduler;
* the real node ``cai-node-0`` (tests/cluster/node.py): CoreDNS, containerd, the kubelet, kube-proxy;
* kwok, managing only Nodes annotated ``kwok.x-k8s.io/node=fake`` (one is created, tainted so only pods
  that ask land there: ``kwok-node-0``), with its default stages: pods become Running, Job pods Succeeded;
* MinIO (S3, plain HTTP) with a bucket and random credentials;
* Prometheus (Debian's) scraping itself and every target added with ``Prometheus.add_target``.

With the node, the API server, MinIO and CoreDNS listen on the host end of the node's veth (reached from
the host and from pods alike); the rest stays on 127.0.0.1. ``up(node=False)`` (``--no-node``) keeps
everything on 127.0.0.1 with kwok only.

Contract files under the root (``.cache/cluster`` for ``make cluster-up``): ``kubeconfig``, ``s3.env``
(shell ``export`` lines), ``state.json`` (what is running), ``logs/``, ``bin`` (symlink from the build),
``node/`` (the node's files).
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import node as node_mod

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO / ".cache" / "cluster"
IMAGES_JSON = REPO / ".cache" / "images" / "images.json"  # written by `make images` (images/build.py)
KWOK_NODE = "kwok-node-0"
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# What a pod (or a run's `resources`) says to land on the kwok node, which "runs" pods without running
# anything; with a real node the kwok node is tainted (node.KWOK_TAINT) so nothing else lands there.
KWOK_PLACEMENT = {"nodeSelector": {"type": "kwok"},
                  "tolerations": [{"key": node_mod.KWOK_TAINT["key"], "operator": "Exists",
                                   "effect": node_mod.KWOK_TAINT["effect"]}]}
# The same as helm flags, for charts with the usual nodeSelector and tolerations values.
KWOK_HELM_FLAGS = [f"--set-json={k}={json.dumps(v)}" for k, v in KWOK_PLACEMENT.items()]
S3_REGION = "us-east-1"
S3_BUCKET = "cai-test"
K8S_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_COMPONENTS = ("coredns", "containerd", "kubelet", "kube-proxy")
CONTROLLERS = tuple(f"{c}-controller" for c in (
    "job", "cronjob", "garbage-collector", "namespace", "serviceaccount", "serviceaccount-token",
    "ttl-after-finished", "replicaset", "deployment", "statefulset", "pod-garbage-collector",
    "root-ca-certificate-publisher", "clusterrole-aggregation",
    # Services of the real node: Endpoints and EndpointSlices for kube-proxy, CoreDNS and Prometheus
    "endpoints", "endpointslice", "endpointslice-mirroring",
))
DEFAULT_CAPACITY = {
    "cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti", "nvidia.com/gpu": "8",
}


class ClusterError(RuntimeError):
    """A component failed to start or answer; the message carries the tail of its log."""


def bin_dir_default() -> Path:
    return Path(os.environ.get("CAI_CLUSTER_BIN") or REPO / ".cache" / "cluster" / "bin")


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ----------------------------------------------------------------------------------------------- PKI
def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def make_pki(pki: Path, ips: Iterable[str] = (), node_ip: str | None = None) -> dict[str, Path]:
    """A throw-away CA, a serving cert for 127.0.0.1/localhost/kubernetes.* (and `ips`), and the
    service-account keys; with `node_ip`, also the kubelet's serving cert and the API server's client
    cert for talking to the kubelet (logs, exec)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.now(_dt.UTC)

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def usage(**on: bool) -> x509.KeyUsage:
        flags = dict.fromkeys(("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign",
                               "content_commitment", "data_encipherment", "key_agreement",
                               "encipher_only", "decipher_only"), False)
        return x509.KeyUsage(**{**flags, **on})

    def builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(hours=1))
                .not_valid_after(now + _dt.timedelta(days=365)))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        builder(name("cai-test-ca"), name("cai-test-ca"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(file: str, subject: x509.Name, *, server: bool, dns: Iterable[str] = (),
             addrs: Iterable[str] = ()) -> dict[str, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (builder(subject, ca.subject, key.public_key())
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(usage(digital_signature=True, key_encipherment=True), critical=True)
             .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                            critical=False))
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addrs]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return {"cert": _write(pki / f"{file}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644),
                "key": _write(pki / f"{file}.key", pem_key(key))}

    srv = leaf("apiserver", name("kube-apiserver"), server=True,
               dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local"),
               addrs=("127.0.0.1", "10.0.0.1", *ips))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out = {
        "ca": _write(pki / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644),
        "ca_key": _write(pki / "ca.key", pem_key(ca_key)),
        "cert": srv["cert"], "key": srv["key"],
        "sa_key": _write(pki / "sa.key", pem_key(sa_key)),
        "sa_pub": _write(pki / "sa.pub", sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644),
    }
    if node_ip:
        from tests.cluster.node import NODE_NAME

        kubelet = leaf("kubelet", name(f"system:node:{NODE_NAME}", "system:nodes"), server=True,
                       dns=(NODE_NAME,), addrs=(node_ip,))
        client = leaf("apiserver-kubelet-client", name("kube-apiserver-kubelet-client", "system:masters"),
                      server=False)
        out.update(kubelet_cert=kubelet["cert"], kubelet_key=kubelet["key"],
                   kubelet_client_cert=client["cert"], kubelet_client_key=client["key"])
    return out


def kubeconfig_yaml(server: str, ca_file: Path, token: str, user: str) -> str:
    """A kubeconfig (JSON is YAML) with the CA embedded, so the file stands alone."""
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "cai-test", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "cai-test", "context": {"cluster": "cai-test", "user": user}}],
        "current-context": "cai-test",
    }
    return json.dumps(cfg, indent=2) + "\n"


# ----------------------------------------------------------------------------------------- processes
_CHILDREN: dict[int, subprocess.Popen] = {}


def _child_setup(die_with_parent: bool, cgroup_procs: Path | None) -> Callable[[], None] | None:
    """What a child does before exec: ask to be killed when we die, join a cgroup (the node's).

    SIGKILL, not SIGTERM: with its owner gone nobody waits for a graceful stop, and a graceful one is slow
    here (etcd waits for the apiserver's watches to close, the apiserver retries etcd to drop its lease:
    measured 21 s on idle cores, over 30 s under CI load). etcd and Prometheus recover from their logs.
    """
    if not die_with_parent and cgroup_procs is None:
        return None

    def setup() -> None:  # pragma: no cover - runs in the child
        import ctypes

        if die_with_parent:
            with contextlib.suppress(Exception):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if cgroup_procs is not None:
            Path(cgroup_procs).write_text(str(os.getpid()))

    return setup


def spawn(name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None,
          die_with_parent: bool = False, cwd: Path | None = None, program: str | None = None,
          cgroup_procs: Path | None = None) -> dict[str, Any]:
    """Start one component in its own session, output to logs/<name>.log; returns its state record.

    `program` is what argv finally execs when argv[0] is a wrapper (nsenter, unshare): the record names
    it, and this waits (briefly) until the wrappers have exec'd it, so liveness checks see the program.
    """
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            env={**os.environ, **(env or {})}, start_new_session=True,
            preexec_fn=_child_setup(die_with_parent, cgroup_procs),  # noqa: PLW1509 (prctl, cgroup only)
        )
    _CHILDREN[p.pid] = p
    rec = {"name": name, "pid": p.pid, "argv0": program or argv[0], "log": str(log)}
    deadline = time.monotonic() + 10
    while program and _cmdline0(p.pid) != program and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return rec


def _cmdline0(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    if state in ("Z", "X"):
        return None
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def proc_alive(rec: dict[str, Any]) -> bool:
    """Whether the process we started is still there (same pid *and* same program)."""
    return _cmdline0(int(rec["pid"])) == rec["argv0"]


def stop_procs(recs: Iterable[dict[str, Any]], grace: float = 10.0) -> None:
    """SIGTERM each recorded process that is still ours, then SIGKILL what is left after `grace`."""
    recs = [r for r in recs if proc_alive(r)]
    for r in recs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(r["pid"]), signal.SIGTERM)  # its own session: the group is it (and its children)
    deadline = time.monotonic() + grace
    for r in recs:
        pid = int(r["pid"])
        while proc_alive(r) and time.monotonic() < deadline:
            if pid in _CHILDREN:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    _CHILDREN[pid].wait(timeout=0.1)
            else:
                time.sleep(0.1)
        if proc_alive(r):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if pid in _CHILDREN:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _CHILDREN.pop(pid).wait(timeout=5)


def rss_kib(recs: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """{name: (VmRSS, VmHWM)} in KiB for the live processes -- HWM is each one's peak resident memory."""
    out = {}
    for r in recs:
        if not proc_alive(r):
            continue
        vals = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{r['pid']}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    vals[k] = int(v.split()[0])
        out[r["name"]] = (vals.get("VmRSS", 0), vals.get("VmHWM", 0))
    return out


# ------------------------------------------------------------------------------------------------ HTTP
def http(method: str, url: str, *, token: str | None = None, ca: Path | None = None, insecure=False,
         body: Any = None, content_type: str = "application/json", accept: str = "application/json",
         timeout: float = 5.0) -> tuple[int, bytes]:
    """A small HTTP(S) client (status, body); never raises for HTTP status codes."""
    data = None
    headers = {"Accept": accept}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    ctx = None
    if url.startswith("https"):
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ok(method: str, url: str, **kw) -> bool:
    try:
        return http(method, url, **kw)[0] == 200
    except (OSError, ssl.SSLError):
        return False


# ---------------------------------------------------------------------------------------------- views
@dataclass
class KubeCluster:
    """A running API server: kubeconfig, admin token, and helpers (also the `kube_cluster` fixture)."""

    root: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    token: str
    ca_file: Path
    logs_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and the built binaries first on PATH: pass as env= to subprocesses."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; text stdout/stderr; raises with stderr when check fails."""
        p = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                           input=input, capture_output=True, text=True, timeout=timeout, env=self.env,
                           check=False)
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout, p.stderr)
        return p

    def api_client(self):
        """A kubernetes.client.ApiClient for this cluster (a new one each call; close it when done)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def request(self, method: str, path: str, body: Any = None, content_type="application/json",
                accept: str = "application/json", timeout: float = 10.0) -> tuple[int, Any]:
        """Raw API call as the admin: (status, decoded JSON or text)."""
        code, raw = http(method, self.server + path, token=self.token, ca=self.ca_file, body=body,
                         content_type=content_type, accept=accept, timeout=timeout)
        try:
            return code, json.loads(raw) if raw else None
        except ValueError:
            return code, raw.decode(errors="replace")

    def create_node(self, name: str, *, labels: dict[str, str] | None = None,
                    annotations: dict[str, str] | None = None, taints: list[dict] | None = None,
                    capacity: dict[str, str] | None = None, kwok: bool = False) -> dict:
        """Create a Node that is Ready (a plain object: nothing runs its pods unless kwok=True, in which
        case kwok manages it). Idempotent. Used for kwok-node-0 and the plain nodes of test_rbac."""
        cap = {**DEFAULT_CAPACITY, **(capacity or {})}
        ann = {**(annotations or {})}
        if kwok:
            ann[KWOK_ANNOTATION[0]] = KWOK_ANNOTATION[1]
        status: dict[str, Any] = {"capacity": cap, "allocatable": cap}
        if not kwok:
            now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            status.update({
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "test node (no kubelet; a test fixture runs its pods)",
                                "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": name}],
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                             "kubeletVersion": "v1.34.10", "kubeProxyVersion": "",
                             "containerRuntimeVersion": "local://", "osImage": "", "kernelVersion": "",
                             "machineID": "", "systemUUID": "", "bootID": ""}})
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": ann, "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "type": "kwok" if kwok else "local", **(labels or {})}},
            "spec": {"taints": taints or []},
            "status": status,  # Nodes take their status on create (as a kubelet registers)
        }
        code, body = self.request("POST", "/api/v1/nodes", node)
        if code == 409 and not kwok:  # already there: make sure it is Ready again
            code, body = self.request("PATCH", f"/api/v1/nodes/{name}/status", {"status": status},
                                      content_type="application/merge-patch+json")
        if code not in (200, 201, 409):
            raise ClusterError(f"creating node {name}: HTTP {code}: {body}")
        return body

    def delete_node(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/nodes/{name}")

    def node_ready(self, name: str) -> bool:
        code, body = self.request("GET", f"/api/v1/nodes/{name}")
        if code != 200:
            return False
        conds = (body.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    def log_tail(self, component: str, lines: int = 40) -> str:
        return log_tail(self.logs_dir / f"{component}.log", lines)


@dataclass
class S3Server:
    """MinIO on loopback with one bucket (also the `s3_server` fixture)."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = S3_REGION

    @property
    def vars(self) -> dict[str, str]:
        """Only the S3 variables (the lines of s3.env)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region,
                "CAI_S3_BUCKET": self.bucket}

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus the S3 variables: pass as env= to subprocesses."""
        return {**os.environ, **self.vars}

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def filesystem(self):
        """An s3fs.S3FileSystem for this server (paths are 'bucket/key')."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": self.region},
                                 skip_instance_cache=True)

    def env_file_text(self) -> str:
        return "".join(f"export {k}={v}\n" for k, v in self.vars.items())


@dataclass
class Prometheus:
    """A Prometheus on loopback (also what the `prometheus` fixture yields).

    add_target("127.0.0.1:8000") makes it scrape a target (file-based discovery, 1 s interval);
    query("up") runs an instant query; wait_for(expr) polls until the query returns something.
    """

    url: str
    dir: Path
    proc: dict[str, Any] | None = None
    owned: bool = False

    def add_target(self, target: str | list[str], job: str = "test", labels: dict[str, str] | None = None,
                   metrics_path: str = "/metrics") -> None:
        """Scrape `target` ("host:port", or a list of them) as `job` (replacing that job's targets)."""
        targets = [target] if isinstance(target, str) else list(target)
        group = {"targets": targets, "labels": {"job": job, "__metrics_path__": metrics_path,
                                                  **(labels or {})}}
        _write(self.dir / "targets" / f"{job}.json", json.dumps([group]), 0o644)

    def remove_target(self, job: str = "test") -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "targets" / f"{job}.json").unlink()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        code, raw = http("GET", url, timeout=10)
        body = json.loads(raw)
        if code != 200 or body.get("status") != "success":
            raise ClusterError(f"prometheus {path} {params}: HTTP {code}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query; returns data.result (a list of {metric, value})."""
        return self.api("query", query=expr)["result"]

    def targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def wait_for(self, expr: str, timeout: float = 30.0,
                 predicate: Callable[[list[dict]], bool] = bool) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus: {expr!r} still {result!r} after {timeout}s; "
                                   f"targets: {self.targets()}")
            time.sleep(0.5)

    def wait_target_up(self, target: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for t in self.targets():
                if t.get("scrapeUrl", "").split("/")[2:3] == [target] and t.get("health") == "up":
                    return t
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus: target {target} not up after {timeout}s: {self.targets()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.owned and self.proc:
            stop_procs([self.proc])


def prometheus_config(dir: Path, self_port: int, rule_files: Iterable[str | Path] = ()) -> Path:
    (dir / "targets").mkdir(parents=True, exist_ok=True)
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(r).resolve()) for r in rule_files],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]},
            {"job_name": "file", "file_sd_configs": [
                {"files": [str(dir / "targets" / "*.json")], "refresh_interval": "1s"}]},
        ],
    }
    return _write(dir / "prometheus.yml", json.dumps(cfg, indent=2), 0o644)


def start_prometheus(dir: Path, bin_dir: Path | None = None, *, logs: Path | None = None,
                     rule_files: Iterable[str | Path] = (), targets: Iterable[str] = (),
                     die_with_parent: bool = True, timeout: float = 30.0, name: str = "prometheus") -> Prometheus:
    """Start a Prometheus of its own (e.g. with rule files); stop it with .stop()."""
    bin_dir = bin_dir or bin_dir_default()
    dir.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    cfg = prometheus_config(dir, port, rule_files)
    rec = spawn(name, _prometheus_argv(bin_dir, cfg, dir, port), logs or dir / "logs",
                die_with_parent=die_with_parent)
    prom = Prometheus(url=f"http://127.0.0.1:{port}", dir=dir, proc=rec, owned=True)
    for t in targets:
        prom.add_target(t)
    try:
        _wait_ready(rec, lambda: _ok("GET", f"{prom.url}/-/ready"), timeout)
    except ClusterError:
        stop_procs([rec])
        raise
    return prom


def _prometheus_argv(bin_dir: Path, cfg: Path, dir: Path, port: int) -> list[str]:
    exe = bin_dir / "prometheus"
    return [str(exe if exe.exists() else shutil.which("prometheus") or exe),
            f"--config.file={cfg}", f"--storage.tsdb.path={dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d", "--log.level=warn"]


def _wait_ready(rec: dict[str, Any], check: Callable[[], bool], timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc_alive(rec):
            raise ClusterError(f"{rec['name']} exited during start-up; tail of {rec['log']}:\n"
                               f"{log_tail(Path(rec['log']))}")
        if check():
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"{rec['name']} not ready{' (' + what + ')' if what else ''} after "
                               f"{timeout:.0f}s; tail of {rec['log']}:\n{log_tail(Path(rec['log']))}")
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    """What is running under one root (read from and written to <root>/state.json)."""

    root: Path
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @classmethod
    def load(cls, root: Path = DEFAULT_ROOT) -> Cluster | None:
        try:
            return cls(Path(root), json.loads((Path(root) / "state.json").read_text()))
        except (OSError, ValueError):
            return None

    def save(self) -> None:
        _write(self.state_file, json.dumps(self.state, indent=2), 0o644)

    @property
    def procs(self) -> list[dict[str, Any]]:
        return self.state.setdefault("procs", [])

    @property
    def kube(self) -> KubeCluster:
        s = self.state
        return KubeCluster(root=self.root, bin_dir=Path(s["bin_dir"]), kubeconfig=self.root / "kubeconfig",
                           server=s["server"], token=s["token"], ca_file=Path(s["ca_file"]),
                           logs_dir=self.root / "logs")

    @property
    def s3(self) -> S3Server:
        return S3Server(**self.state["s3"])

    @property
    def prometheus(self) -> Prometheus:
        p = self.state["prometheus"]
        rec = next((r for r in self.procs if r["name"] == "prometheus"), None)
        return Prometheus(url=p["url"], dir=Path(p["dir"]), proc=rec, owned=False)

    @property
    def node(self) -> node_mod.Node | None:
        """The real node, when the cluster has one."""
        n = self.state.get("node")
        return node_mod.Node(net=node_mod.NodeNet(**n["net"]), paths=node_mod.NodePaths(Path(n["dir"]))) if n else None

    def healthy(self) -> bool:
        """Ready, every process alive, and the API server answering /readyz."""
        if not self.state.get("ready") or not all(proc_alive(r) for r in self.procs):
            return False
        return _ok("GET", self.state["server"] + "/readyz", token=self.state["token"],
                   ca=Path(self.state["ca_file"]))

    def memory(self) -> dict[str, tuple[int, int]]:
        return rss_kib(self.procs)


def up(root: Path = DEFAULT_ROOT, bin_dir: Path | None = None, *, timeout: float = 90.0,
       reuse: bool = True, die_with_parent: bool = False, owner: str = "make", node: bool = True,
       log: Callable[[str], None] = lambda m: None) -> Cluster:
    """Start everything under `root` (or return the healthy cluster already there when `reuse`).

    With `node` (the default) the cluster has a real node (tests/cluster/node.py) and the API server,
    MinIO and CoreDNS listen on the host end of its veth, an address that the host and the pods both
    reach; without it everything is on 127.0.0.1 and only kwok runs pods.
    Ports are picked free just before the start; if another process takes one in between (the
    component then fails with "address already in use"), the start is tried once more on new ports.
    """
    for attempt in (1, 2):
        try:
            return _up_once(root, bin_dir, timeout=timeout, reuse=reuse, die_with_parent=die_with_parent,
                            owner=owner, node=node, log=log)
        except ClusterError as e:
            if attempt == 2 or "address already in use" not in str(e):
                raise
            log(f"a port was taken during start-up, retrying: {str(e).splitlines()[0]}")
    raise AssertionError("unreachable")


def _up_once(root: Path, bin_dir: Path | None, *, timeout: float, reuse: bool, die_with_parent: bool,
             owner: str, node: bool, log: Callable[[str], None]) -> Cluster:
    root = Path(root).resolve()
    bin_dir = Path(bin_dir or bin_dir_default())
    t0 = time.monotonic()
    old = Cluster.load(root)
    if old is not None:
        if reuse and old.healthy() and bool(old.state.get("node")) == node:
            log(f"already up under {root}")
            return old
        _stop(old)
    missing = [b for b in (*K8S_COMPONENTS, "kubectl", "minio") if not (bin_dir / b).exists()]
    if missing:
        raise ClusterError(f"missing binaries {missing} in {bin_dir}: run `make cluster` first")
    if not (bin_dir / "prometheus").exists() and not shutil.which("prometheus"):
        raise ClusterError("prometheus is not installed: run `make cluster` (apt-get install prometheus)")
    if node:
        try:
            node_mod.check_host(root, bin_dir)
        except node_mod.NodeError as e:
            raise ClusterError(str(e)) from e
        _reap_stale_nodes(log)

    for sub in ("data", "pki", "conf", "prometheus", "node", "state.json", "kubeconfig", "s3.env"):
        p = root / sub
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    logs = root / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    data, conf = root / "data", root / "conf"
    for d in (data / "etcd", data / "minio", conf):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)

    cluster = Cluster(root, {"owner": owner, "owner_pid": os.getpid(), "ready": False, "root": str(root),
                             "bin_dir": str(bin_dir), "procs": []})
    net = None
    if node:
        try:
            net = node_mod.net_up(root)
        except node_mod.NodeError as e:
            raise ClusterError(str(e)) from e
        cluster.state["node"] = {"net": node_mod.net_state(net), "dir": str(root / "node")}
        cluster.save()
        node_mod.register(root, cluster.state["node"])
    try:
        return _start(cluster, root, bin_dir, net, timeout=timeout, die_with_parent=die_with_parent,
                      t0=t0, log=log)
    except BaseException:
        _stop(cluster)
        cluster.state["ready"] = False
        cluster.save()
        raise


def _reap_stale_nodes(log: Callable[[str], None]) -> None:
    """Remove the nodes of clusters whose owner died without `down` (a killed test session): none of
    their processes is alive, nor the process that started them, or their root is gone."""
    for entry in node_mod.registered():
        if entry["age_s"] < 60:  # a cluster starting right now may not have its state.json yet
            continue
        state = Cluster.load(Path(entry["root"]))
        alive = state is not None and (any(proc_alive(r) for r in state.procs)
                                       or _cmdline0(int(state.state.get("owner_pid", 0))) is not None)
        if not alive:
            log(f"removing the node of a cluster that was not stopped: {entry['root']}")
            node_mod.teardown(entry["node"])


def _start(cluster: Cluster, root: Path, bin_dir: Path, net: node_mod.NodeNet | None, *, timeout: float,
           die_with_parent: bool, t0: float, log: Callable[[str], None]) -> Cluster:
    data, conf, logs = root / "data", root / "conf", root / "logs"
    listen = net.host_ip if net else "127.0.0.1"  # what the host and the pods both reach
    pki = make_pki(root / "pki", ips=[net.host_ip] if net else [], node_ip=net.node_ip if net else None)
    names = ["etcd", "etcd_peer", "apiserver", "cm", "sched", "kwok", "minio", "minio_console", "prom"]
    if net:
        names.append("coredns_ready")
    port = dict(zip(names, free_ports(len(names))))
    server = f"https://{listen}:{port['apiserver']}"
    users = ["admin", "cm", "sched", "kwok"] + (["node", "kube-proxy", "coredns"] if net else [])
    tokens = {u: secrets.token_hex(16) for u in users}
    identity = {"admin": 'cai-admin,uid-admin,"system:masters"', "cm": "system:kube-controller-manager,uid-kcm",
                "sched": "system:kube-scheduler,uid-sched", "kwok": 'kwok,uid-kwok,"system:masters"',
                "node": f'system:node:{node_mod.NODE_NAME},uid-node,"system:nodes"',
                "kube-proxy": "system:kube-proxy,uid-kube-proxy", "coredns": "coredns,uid-coredns"}
    _write(root / "pki" / "tokens.csv", "".join(f"{tokens[u]},{identity[u]}\n" for u in users))
    kcfg = {u: _write(conf / f"{u}.kubeconfig", kubeconfig_yaml(server, pki["ca"], t, u))
            for u, t in tokens.items()}
    s3 = S3Server(endpoint=f"http://{listen}:{port['minio']}", access_key="cai" + secrets.token_hex(6),
                  secret_key=secrets.token_hex(20), bucket=S3_BUCKET)
    prom_dir = root / "prometheus"
    prom_cfg = prometheus_config(prom_dir, port["prom"])

    cluster.state.update({
        "server": server, "token": tokens["admin"], "ca_file": str(pki["ca"]), "ports": port,
        "s3": {"endpoint": s3.endpoint, "access_key": s3.access_key, "secret_key": s3.secret_key,
               "bucket": s3.bucket, "region": s3.region},
        "prometheus": {"url": f"http://127.0.0.1:{port['prom']}", "dir": str(prom_dir)},
    })
    cluster.save()
    b = lambda name: str(bin_dir / name)
    secure = lambda name, p: [f"--kubeconfig={kcfg[name]}", f"--authentication-kubeconfig={kcfg[name]}",
                              f"--authorization-kubeconfig={kcfg[name]}", "--bind-address=127.0.0.1",
                              f"--secure-port={p}", f"--cert-dir={root / 'pki' / name}", "--leader-elect=false"]

    def start(name: str, argv: list[str], env: dict[str, str] | None = None, **kw) -> dict[str, Any]:
        rec = spawn(name, argv, logs, env=env, die_with_parent=die_with_parent, **{"cwd": root, **kw})
        cluster.procs.append(rec)
        cluster.save()
        return rec

    timings: dict[str, float] = {}

    def wait(rec, check, what=""):
        _wait_ready(rec, check, max(1.0, timeout - (time.monotonic() - t0)), what)
        timings[rec["name"] if not what else f"{rec['name']} ({what})"] = round(time.monotonic() - t0, 1)

    etcd_url = f"http://127.0.0.1:{port['etcd']}"
    peer_url = f"http://127.0.0.1:{port['etcd_peer']}"
    etcd = start("etcd", [
        b("etcd"), "--name=cai", f"--data-dir={data / 'etcd'}", f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}", f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=cai={peer_url}",
        "--unsafe-no-fsync=true", "--quota-backend-bytes=1073741824", "--log-level=warn",
    ])
    if net:
        node_flags = [
            f"--kubelet-client-certificate={pki['kubelet_client_cert']}",
            f"--kubelet-client-key={pki['kubelet_client_key']}",
            f"--kubelet-certificate-authority={pki['ca']}", "--kubelet-preferred-address-types=InternalIP",
            "--enable-admission-plugins=NodeRestriction",
        ]
    else:
        # Endpoints may not hold a loopback address; the `kubernetes` Service just has none.
        node_flags = ["--endpoint-reconciler-type=none"]
    api = start("kube-apiserver", [
        b("kube-apiserver"), f"--advertise-address={listen}", f"--bind-address={listen}",
        f"--secure-port={port['apiserver']}", f"--cert-dir={root / 'pki'}",
        f"--tls-cert-file={pki['cert']}", f"--tls-private-key-file={pki['key']}",
        f"--client-ca-file={pki['ca']}", f"--etcd-servers={etcd_url}",
        f"--service-cluster-ip-range={node_mod.SERVICE_CIDR}", f"--service-account-issuer={server}",
        f"--service-account-key-file={pki['sa_pub']}",
        f"--service-account-signing-key-file={pki['sa_key']}",
        "--authorization-mode=Node,RBAC", f"--token-auth-file={root / 'pki' / 'tokens.csv'}",
        "--allow-privileged=true", "--profiling=false", "--enable-priority-and-fairness=false",
        *node_flags,
        # no node-lifecycle controller here to lift the not-ready taint this plugin puts on new Nodes
        "--disable-admission-plugins=TaintNodesByCondition",
        # fills kube-system/extension-apiserver-authentication, which the controller-manager and
        # scheduler read for their own (delegated) authentication
        f"--requestheader-client-ca-file={pki['ca']}", "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
    ])
    minio = start("minio", [
        b("minio"), "server", f"--address={listen}:{port['minio']}",
        f"--console-address=127.0.0.1:{port['minio_console']}", f"--certs-dir={root / 'pki' / 'minio'}",
        "--quiet", str(data / "minio"),
    ], env={"MINIO_ROOT_USER": s3.access_key, "MINIO_ROOT_PASSWORD": s3.secret_key,
            "MINIO_REGION": s3.region, "MINIO_UPDATE": "off", "MINIO_BROWSER": "off",
            "MINIO_PROMETHEUS_AUTH_TYPE": "public", "MINIO_API_REQUESTS_MAX": "200"})
    prom = start("prometheus", _prometheus_argv(bin_dir, prom_cfg, prom_dir, port["prom"]))

    wait(etcd, lambda: _ok("GET", f"{etcd_url}/health"))
    wait(api, lambda: _ok("GET", f"{server}/readyz", token=tokens["admin"], ca=pki["ca"]), "/readyz")
    kube = cluster.kube
    cm = start("kube-controller-manager", [
        b("kube-controller-manager"), *secure("cm", port["cm"]),
        f"--controllers={','.join(CONTROLLERS)}", f"--service-account-private-key-file={pki['sa_key']}",
        f"--root-ca-file={pki['ca']}", "--use-service-account-credentials=true",
        "--cluster-name=cai-test", "--profiling=false",
    ])
    sched = start("kube-scheduler", [b("kube-scheduler"), *secure("sched", port["sched"]),
                                     "--profiling=false"])
    # an explicit (empty) config, so a ~/.kwok/kwok.yaml cannot change the stages: kwok's defaults
    kwok_cfg = _write(conf / "kwok.yaml", "# no Stage objects: kwok's default node and pod stages\n")
    kwok = start("kwok", [
        b("kwok"), f"--config={kwok_cfg}", f"--kubeconfig={kcfg['kwok']}", "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
        f"--server-address=127.0.0.1:{port['kwok']}", "--node-ip=127.0.0.1",
        f"--node-port={port['kwok']}", "--cidr=10.244.0.1/24",
    ])
    if net:
        _start_node(cluster, net, kube, start, wait, kcfg=kcfg, pki=pki, bin_dir=bin_dir, port=port)
    wait(minio, lambda: _ok("GET", f"{s3.endpoint}/minio/health/ready"))
    _make_bucket(s3)
    wait(prom, lambda: _ok("GET", f"{cluster.state['prometheus']['url']}/-/ready"))
    wait(cm, lambda: _ok("GET", f"https://127.0.0.1:{port['cm']}/healthz", insecure=True))
    wait(sched, lambda: _ok("GET", f"https://127.0.0.1:{port['sched']}/healthz", insecure=True))
    wait(kwok, lambda: _ok("GET", f"http://127.0.0.1:{port['kwok']}/healthz"))
    # With a real node, kwok's node is tainted: only pods that ask for it (KWOK_PLACEMENT) land there.
    kube.create_node(KWOK_NODE, kwok=True, labels={"node-role.kubernetes.io/agent": ""},
                     taints=[node_mod.KWOK_TAINT] if net else None)
    wait(kwok, lambda: kube.node_ready(KWOK_NODE), f"node {KWOK_NODE} Ready")
    wait(cm, lambda: kube.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
         "default service account")

    _write(root / "kubeconfig", kubeconfig_yaml(server, pki["ca"], tokens["admin"], "cai-admin"))
    _write(root / "s3.env", s3.env_file_text())
    cluster.state.update(ready=True, started_s=round(time.monotonic() - t0, 1), timings=timings)
    cluster.save()
    log(f"up under {root} in {cluster.state['started_s']}s (ready at: {timings})")
    return cluster


def _start_node(cluster: Cluster, net: node_mod.NodeNet, kube: KubeCluster, start, wait, *,
                kcfg: dict[str, Path], pki: dict[str, Path], bin_dir: Path, port: dict[str, int]) -> None:
    """CoreDNS on the host, then containerd, the kubelet and kube-proxy in the node's namespaces."""
    for path, obj in node_mod.coredns_rbac():
        code, body = kube.request("POST", path, obj)
        if code not in (201, 409):
            raise ClusterError(f"creating {obj['kind']} {obj['metadata']['name']}: HTTP {code}: {body}")
    paths = node_mod.NodePaths(Path(cluster.state["node"]["dir"]))
    node_mod.write_configs(paths, net, kubeconfigs=kcfg, pki=pki, bin_dir=bin_dir,
                           coredns_ready_port=port["coredns_ready"])
    coredns = start("coredns", node_mod.argv_coredns(paths, bin_dir), cwd=paths.dir)
    procs = node_mod.make_cgroup(net.cgroup)
    containerd = start("containerd", node_mod.argv_containerd(paths, net), program=node_mod.DEBIAN["containerd"],
                       cgroup_procs=procs)
    wait(containerd, lambda: node_mod.ctr(paths, "version", timeout=5).returncode == 0)
    for image in ("pause-image.tar", "busybox-image.tar"):
        node_mod.import_image(paths, bin_dir / image, *node_mod.oci_archive_image(bin_dir / image))
    in_node = lambda argv: node_mod.argv_in_node(containerd["pid"], argv)
    t_kubelet = time.monotonic()
    kubelet = start("kubelet", in_node(node_mod.argv_kubelet(paths, net, bin_dir, kcfg["node"])),
                    program=str(bin_dir / "kubelet"), cgroup_procs=procs)
    proxy = start("kube-proxy", in_node(node_mod.argv_kube_proxy(paths, bin_dir)),
                  program=str(bin_dir / "kube-proxy"), cgroup_procs=procs)
    wait(kubelet, lambda: kube.node_ready(node_mod.NODE_NAME), f"node {node_mod.NODE_NAME} Ready")
    cluster.state["node"]["ready_after_s"] = round(time.monotonic() - t_kubelet, 2)  # from the kubelet's start
    wait(coredns, lambda: _ok("GET", f"http://127.0.0.1:{port['coredns_ready']}/ready"))
    wait(proxy, lambda: _ok("GET", f"http://{net.node_ip}:{node_mod.PROXY_HEALTH_PORT}/healthz"))


def _make_bucket(s3: S3Server) -> None:
    client = s3.client()
    try:
        client.create_bucket(Bucket=s3.bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass


def _stop(cluster: Cluster) -> None:
    """Stop the kubelet and kube-proxy, then containerd, and remove the node; then the API server's
    clients, the API server, etcd (all at once, the API server would wait out its grace period for etcd)."""
    last = ("kubelet", "kube-proxy", "containerd", "kube-apiserver", "etcd")
    named = lambda *names: [r for r in cluster.procs if r["name"] in names]
    stop_procs(named("kubelet", "kube-proxy"))
    stop_procs(named("containerd"))
    if cluster.state.get("node"):
        node_mod.teardown(cluster.state["node"])
    stop_procs([r for r in reversed(cluster.procs) if r["name"] not in last])
    # With a real node the API server advertises itself in the `kubernetes` Endpoints; on SIGTERM it tries
    # to remove that entry and hangs there (seen: 10 s, then killed). Nothing here needs that entry gone.
    stop_procs(named("kube-apiserver"), grace=3.0)
    stop_procs(named("etcd"))


def down(root: Path = DEFAULT_ROOT, *, keep_data: bool = False) -> bool:
    """Stop what state.json lists (only processes that are still ours) and remove the node and what it
    wrote; False if nothing was there."""
    root = Path(root).resolve()
    cluster = Cluster.load(root)
    if cluster is None:
        return False
    _stop(cluster)
    cluster.state_file.unlink(missing_ok=True)
    for name in ("kubeconfig", "s3.env"):
        (root / name).unlink(missing_ok=True)
    if not keep_data:
        for sub in ("data", "prometheus"):
            shutil.rmtree(root / sub, ignore_errors=True)
    return True


def import_project_images(node: node_mod.Node, images_json: Path = IMAGES_JSON) -> list[str]:
    """Import the images `make images` listed into the node (those already there are skipped); their refs."""
    if not images_json.exists():
        raise ClusterError(f"{images_json} is missing: run `make images`")
    images = json.loads(images_json.read_text())
    for img in images:
        node.import_image(Path(img["archive"]), img["ref"], img["id"])
    return [img["ref"] for img in images]


# ------------------------------------------------------------------------------------------------- CLI
def _report(cluster: Cluster) -> str:
    mem = cluster.memory()
    lines = [f"root       {cluster.root}", f"kubeconfig {cluster.root / 'kubeconfig'}",
             f"apiserver  {cluster.state['server']}",
             f"s3         {cluster.state['s3']['endpoint']} bucket {cluster.state['s3']['bucket']}"
             + f" (env: {cluster.root / 's3.env'})",
             f"prometheus {cluster.state['prometheus']['url']}", f"logs       {cluster.root / 'logs'}",
             *([(f"node       {node_mod.NODE_NAME} at {n.node_ip}, pods {n.pod_cidr}, netns {n.netns}, "
                f"DNS {n.host_ip}")] if (n := cluster.node and cluster.node.net) else []),
             "processes  " + ", ".join(f"{r['name']}={r['pid']}" for r in cluster.procs),
             f"memory     RSS {sum(v[0] for v in mem.values()) / 1024:.0f} MiB now, sum of per-process "
             f"peaks {sum(v[1] for v in mem.values()) / 1024:.0f} MiB: " +
             ", ".join(f"{k}={v[0] // 1024}/{v[1] // 1024}" for k, v in mem.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.cluster.control_plane", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["up", "down", "status", "restart", "images"],
                    help="images: import the images of `make images` into the running cluster's node")
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("CAI_CLUSTER_ROOT", DEFAULT_ROOT)))
    ap.add_argument("--bin", type=Path, default=None, help="binaries (default .cache/cluster/bin)")
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--no-node", action="store_true", help="no real node: everything on 127.0.0.1, kwok only")
    args = ap.parse_args(argv)
    say = lambda m: print(f"cluster: {m}", flush=True)
    if args.command in ("down", "restart"):
        say("stopped" if down(args.root) else f"nothing running under {args.root}")
    if args.command in ("up", "restart"):
        try:
            t0 = time.monotonic()
            c = up(args.root, args.bin, timeout=args.timeout, node=not args.no_node, log=say)
            say(f"ready in {time.monotonic() - t0:.1f}s\n{_report(c)}")
        except ClusterError as e:
            print(f"cluster: FAILED: {e}", file=sys.stderr)
            return 1
    if args.command in ("status", "images"):
        c = Cluster.load(args.root)
        if c is None or not c.healthy():
            say(f"not running under {args.root}")
            return 1
        if args.command == "status":
            say(f"healthy\n{_report(c)}")
        elif c.node is None:
            say("this cluster has no node")
            return 1
        else:
            try:
                say("node has " + ", ".join(import_project_images(c.node)))
            except (ClusterError, node_mod.NodeError) as e:
                print(f"cluster: FAILED: {e}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
