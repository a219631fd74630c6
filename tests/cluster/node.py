"""The test control plane's real node: containerd + runc and the kubelet in a network namespace of their
own, kube-proxy for Service routing and CoreDNS for cluster DNS, all on this machine only.

Where it sits: tests/cluster/control_plane.py calls `check_host` and `net_up` before it starts the API
server (which listens on the host end of the node's veth, so pods reach it), `write_configs` and the
`argv_*` command lines once the API server answers, and `teardown` from `down`. Binaries come from tests/cluster/build.sh (kubelet,
kube-proxy, coredns; the pause and busybox images) and Debian (containerd, runc, CNI plugins, iptables).

Isolation from the machine (several clusters, one per root, can run side by side):

* Network: namespace ``cai-<h>`` (``h``: a hash of the cluster root) joined to the host by a veth pair
  ``cai<h>`` on a private /30 (``10.227.N.0/30``: host end .1, node .2); pods sit on the bridge ``cni0``
  in ``10.228.N.0/24``, which the host routes to the veth (so Prometheus scrapes pods directly). The
  namespace has no default route, nothing is masqueraded, and no netfilter rule is made in the host's
  namespace: kube-proxy's rules live in the node's. Every packet stays on this machine.
* Mounts: containerd, the kubelet and kube-proxy share one mount namespace that does not propagate
  back to the host (tests/cluster/node-ns.sh): the kernel settings the kubelet writes are files
  bind-mounted over /proc/sys, and /var/lib, /var/log, /run are overlays whose writes land in
  ``<root>/node/overlay``. Everything they mount disappears with them.
* Processes: the node's processes and its pods are in the pids cgroup ``/cai-<h>`` (the kubelet's
  cgroupRoot): teardown kills what is left there, then removes those cgroups, the namespace (and with
  it the bridge, veths and route) and ``<root>/node``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "cai-node-0"
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
CLUSTER_DOMAIN = "cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
LINK_NET, POD_NET = "10.227.{}.0/30", "10.228.{}.0/24"  # N = 1..254, one per cluster on this machine
KUBELET_PORT, PROXY_HEALTH_PORT = 10250, 10256  # on the node's own address: no clash between nodes
HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd", "/var/lib/cni",
              "/usr/libexec/kubernetes", "/etc/cni", "/opt/cni", "/opt/containerd", "/var/lib/containerd")
# Host directories the node sees as overlays (node-ns.sh): a cluster root must not be inside them.
OVERLAID = ("/var/lib", "/var/log", "/run")
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
DEBIAN = {"containerd": "/usr/bin/containerd", "containerd-shim-runc-v2": "/usr/bin/containerd-shim-runc-v2",
          "runc": "/usr/sbin/runc", "ctr": "/usr/bin/ctr", "iptables": "/usr/sbin/iptables",
          "bridge": "/usr/lib/cni/bridge", "host-local": "/usr/lib/cni/host-local",
          "loopback": "/usr/lib/cni/loopback"}
BUILT = ("kubelet", "kube-proxy", "coredns", "pause-image.tar", "busybox-image.tar")
NS_SCRIPT = Path(__file__).with_name("node-ns.sh")
CGROUP_FS = Path("/sys/fs/cgroup")


UNIX_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL; longer paths fail to bind (EINVAL)


class NodeError(RuntimeError):
    """The node cannot start here (what is missing, and how to get it)."""


# ------------------------------------------------------------------------------------------- network
@dataclass(frozen=True)
class NodeNet:
    """One node's names and addresses (kept in state.json under "node")."""

    netns: str
    host_if: str
    host_ip: str
    node_ip: str
    pod_cidr: str
    cgroup: str

    @property
    def gateway(self) -> str:
        """The bridge's address: the pods' default gateway."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))


def check_host(root: Path, bin_dir: Path) -> None:
    """Fail early, naming what is missing: root, the Debian packages, the built binaries and images."""
    if os.geteuid() != 0:
        raise NodeError("the test node (kubelet, containerd, network namespaces) needs root")
    missing = [p for p in DEBIAN.values() if not Path(p).exists()]
    if missing:
        raise NodeError(f"missing {missing}: run `make cluster` (it installs containerd, runc, "
                        "containernetworking-plugins and iptables from Debian)")
    missing = [b for b in BUILT if not (bin_dir / b).exists()]
    if missing:
        raise NodeError(f"missing {missing} in {bin_dir}: run `make cluster` first")
    resolved = Path(root).resolve()
    for d in OVERLAID:
        if resolved.is_relative_to(d):
            raise NodeError(f"cluster root {resolved} is under {d}, which the node overlays: use another root")
    longest = NodePaths(resolved / "node").kubelet_root / "pod-resources" / "0123456789"  # kubelet's temp socket
    if len(str(longest)) > UNIX_SOCKET_PATH_MAX:
        raise NodeError(f"cluster root {resolved} is too long for the kubelet's sockets ({longest} is "
                        f"{len(str(longest))} characters, a unix socket path holds {UNIX_SOCKET_PATH_MAX}): "
                        "use a shorter root")


def _short_hash(root: Path) -> str:
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]


def _in_use() -> str:
    """Addresses and routes of this machine (every namespace's veth shows up here through its route)."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return out + subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout


def _machine_dir() -> Path:
    """Where this machine's nodes are registered (one file each) and the lock lives: the binary cache."""
    d = Path(os.environ.get("CAI_CLUSTER_CACHE", Path.home() / ".cache" / "cai-cluster")) / "nodes"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _machine_lock():
    """Serializes address choice and link creation between clusters started at the same time."""
    with open(_machine_dir() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def register(root: Path, node_state: dict[str, Any]) -> None:
    """Record a node on this machine, so a later start can remove it if its owner died without `down`."""
    _json(_machine_dir() / f"{node_state['net']['netns']}.json", {"root": str(root), "node": node_state})


def registered() -> list[dict[str, Any]]:
    """The nodes registered on this machine, each {"root", "node", "age_s"}."""
    out = []
    for f in _machine_dir().glob("cai-*.json"):
        with contextlib.suppress(OSError, ValueError):
            out.append({**json.loads(f.read_text()), "age_s": time.time() - f.stat().st_mtime})
    return out


def net_up(root: Path) -> NodeNet:
    """Create the node's namespace, veth pair, addresses and the host route to its pod network."""
    h = _short_hash(root)
    netns, host_if = f"cai-{h}", f"cai{h}"
    net_down_names(netns, host_if)  # what a crashed run under this root left
    with _machine_lock():
        used = _in_use()
        start = int(h, 16) % 254
        for i in range(254):
            n = (start + i) % 254 + 1
            link, pods = LINK_NET.format(n), POD_NET.format(n)
            # "10.227.N." and "10.228.N." must appear in no address or route of this machine
            if not any(re.search(rf"\b{re.escape(net.rsplit('.', 1)[0])}\.", used) for net in (link, pods)):
                break
        else:
            raise NodeError(f"no free {LINK_NET.format('N')} / {POD_NET.format('N')} block on this machine")
        hosts = list(ipaddress.ip_network(link).hosts())
        net = NodeNet(netns=netns, host_if=host_if, host_ip=str(hosts[0]), node_ip=str(hosts[1]),
                      pod_cidr=pods, cgroup=f"cai-{h}")
        ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True, text=True)
        try:
            ip("netns", "add", netns)
            ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
            ip("addr", "add", f"{net.host_ip}/30", "dev", host_if)
            ip("link", "set", host_if, "up")
            ip("-n", netns, "addr", "add", f"{net.node_ip}/30", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")
            ip("route", "add", pods, "via", net.node_ip, "dev", host_if)
        except subprocess.CalledProcessError as e:
            net_down_names(netns, host_if)
            raise NodeError(f"setting up the node network failed: {' '.join(e.cmd)}: {e.stderr.strip()}") from e
    return net


def net_down_names(netns: str, host_if: str) -> None:
    """Delete the namespace (its bridge, pod veths and eth0 go with it) and the host end of the veth."""
    subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
    subprocess.run(["ip", "link", "delete", host_if], capture_output=True, check=False)


# ------------------------------------------------------------------------------------------ configs
def _json(path: Path, obj: Any, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    path.chmod(mode)
    return path


def oci_archive_image(archive: Path) -> tuple[str, str]:
    """(name, config digest) of an image archive written by tests/cluster/oci_image.py."""
    import tarfile

    with tarfile.open(archive) as tar:
        (entry,) = json.load(tar.extractfile("index.json"))["manifests"]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{entry['digest'].split(':')[1]}"))
    return entry["annotations"]["io.containerd.image.name"], manifest["config"]["digest"]


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps everything: all under <root>/node, which teardown removes."""

    dir: Path

    containerd_sock = property(lambda self: self.dir / "containerd.sock")
    containerd_conf = property(lambda self: self.dir / "containerd.toml")
    kubelet_conf = property(lambda self: self.dir / "kubelet.json")
    kubelet_root = property(lambda self: self.dir / "kubelet")
    proxy_conf = property(lambda self: self.dir / "kube-proxy.json")
    corefile = property(lambda self: self.dir / "Corefile")
    cni_conf = property(lambda self: self.dir / "cni" / "net.d")
    resolv = property(lambda self: self.dir / "resolv.conf")


def write_configs(paths: NodePaths, net: NodeNet, *, kubeconfigs: dict[str, Path], pki: dict[str, Path],
                  bin_dir: Path, coredns_ready_port: int) -> None:
    """containerd, CNI, kubelet, kube-proxy and CoreDNS configuration files for this node."""
    d = paths.dir
    sandbox, _ = oci_archive_image(bin_dir / "pause-image.tar")
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    paths.containerd_conf.parent.mkdir(parents=True, exist_ok=True)
    paths.containerd_conf.write_text(f"""\
# The test node's containerd (tests/cluster/node.py): every path under {d}.
version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{paths.containerd_sock}"
[ttrpc]
  address = "{d}/containerd.ttrpc.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/containerd/opt"
  [{cri}]
    sandbox_image = "{sandbox}"
    # no CAP_SYS_RESOURCE to lower a container's oom_score_adj below containerd's own here
    restrict_oom_score_adj = true
    disable_apparmor = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [{cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [{cri}.containerd.runtimes.runc.options]
          BinaryName = "{DEBIAN['runc']}"
          SystemdCgroup = false
          Root = "{d}/runc"
    [{cri}.cni]
      bin_dir = "{Path(DEBIAN['bridge']).parent}"
      conf_dir = "{paths.cni_conf}"
""")
    _json(paths.cni_conf / "10-cai.conflist", {
        "cniVersion": "1.0.0", "name": "cai", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": net.pod_cidr, "gateway": net.gateway}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(d / "cni" / "ipam")}}]})
    # The resolv.conf of pods with dnsPolicy Default (none here resolves outside the cluster).
    paths.resolv.write_text(f"nameserver {net.host_ip}\n")
    _json(paths.kubelet_conf, {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": net.node_ip, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": net.node_ip, "healthzPort": KUBELET_PORT + 8,
        "tlsCertFile": str(pki["kubelet_cert"]), "tlsPrivateKeyFile": str(pki["kubelet_key"]),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki["ca"])}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{paths.containerd_sock}",
        # cgroup v1 here (hybrid hierarchy, no hugetlb controller): no QoS cgroups, pods under cgroupRoot
        "cgroupDriver": "cgroupfs", "cgroupsPerQOS": True, "cgroupRoot": f"/{net.cgroup}",
        "enforceNodeAllocatable": [], "failCgroupV1": False, "failSwapOn": False,
        "oomScoreAdj": 0, "makeIPTablesUtilChains": False, "protectKernelDefaults": False,
        "clusterDNS": [net.host_ip], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(paths.resolv),
        "volumePluginDir": str(d / "volume-plugins"), "podLogsDir": str(d / "pod-logs"),
        "staticPodPath": "", "registerNode": True, "rotateCertificates": False, "serverTLSBootstrap": False,
        "maxPods": 30, "serializeImagePulls": False,
        # Images come from archives (no registry to pull them again): never garbage-collect them, and no
        # disk-pressure eviction, whose first step deletes unused images (seen here when other work
        # filled this shared disk: the pause image went, and no pod could start).
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                         "imagefs.available": "0%", "imagefs.inodesFree": "0%"},
        "nodeStatusReportFrequency": "10s", "shutdownGracePeriod": "0s",
    })
    _json(paths.proxy_conf, {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfigs["kube-proxy"])},
        "mode": "iptables", "clusterCIDR": net.pod_cidr, "hostnameOverride": NODE_NAME,
        "bindAddress": net.node_ip, "healthzBindAddress": f"{net.node_ip}:{PROXY_HEALTH_PORT}",
        "metricsBindAddress": "127.0.0.1:10249", "nodePortAddresses": [f"{net.node_ip}/32"],
        # zero: leave the conntrack sysctls alone (nf_conntrack_max is host-wide)
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "30s",
                     "minSyncPeriod": "0s"},
        "oomScoreAdj": 0,
    })
    paths.corefile.write_text(f"""\
# Cluster DNS of the test node (tests/cluster/node.py). No `forward`: only cluster names are answered,
# so nothing is ever sent off this machine.
.:53 {{
    bind {net.host_ip}
    errors
    log  # every query in logs/coredns.log: tests check what pods looked up
    ready 127.0.0.1:{coredns_ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfigs['coredns']} cai-test
        pods insecure
        ttl 5
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
""")


def coredns_rbac() -> list[tuple[str, dict]]:
    """(API path, object): the read-only role CoreDNS's kubernetes plugin needs, bound to its user."""
    name = "cai-test:coredns"
    return [
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                       "verbs": ["list", "watch"]},
                      {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["list", "watch"]}]}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "coredns"}]}),
    ]


# ---------------------------------------------------------------------------------------- processes
def cgroup_dirs(cgroup: str) -> list[Path]:
    """The node's cgroup directory in every mounted hierarchy (v1 controllers and the unified one)."""
    return [d / cgroup for d in sorted(CGROUP_FS.iterdir()) if (d / cgroup).is_dir()]


def make_cgroup(cgroup: str) -> Path:
    """The node's cgroup in every hierarchy (the kubelet's cgroupRoot, which must exist), and the pids
    cgroup its own processes join (<cgroup>/node): returns that one's cgroup.procs."""
    for hierarchy in sorted(CGROUP_FS.iterdir()):
        if not (hierarchy / "cgroup.procs").exists():
            continue
        (hierarchy / cgroup).mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a new v1 cpuset starts empty: take the parent's
            if (hierarchy / knob).exists() and not (hierarchy / cgroup / knob).read_text().strip():
                (hierarchy / cgroup / knob).write_text((hierarchy / knob).read_text())
    procs = CGROUP_FS / "pids" / cgroup / "node"
    procs.mkdir(exist_ok=True)
    return procs / "cgroup.procs"


def argv_containerd(paths: NodePaths, net: NodeNet) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{net.netns}", "unshare", "--mount", "--propagation", "slave",
            "bash", str(NS_SCRIPT), str(paths.dir), " ".join(SYSCTLS), " ".join(OVERLAID), "--",
            DEBIAN["containerd"], f"--config={paths.containerd_conf}"]


def argv_in_node(containerd_pid: int, argv: list[str]) -> list[str]:
    """Run argv in containerd's network and mount namespaces (the kubelet and kube-proxy)."""
    return ["nsenter", f"--target={containerd_pid}", "--mount", "--net", "--", *argv]


def argv_kubelet(paths: NodePaths, net: NodeNet, bin_dir: Path, kubeconfig: Path) -> list[str]:
    return [str(bin_dir / "kubelet"), f"--config={paths.kubelet_conf}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={paths.kubelet_root}", f"--hostname-override={NODE_NAME}", f"--node-ip={net.node_ip}",
            "--node-labels=type=real,node.kubernetes.io/instance-type=cai-test", "--v=1"]


def argv_kube_proxy(paths: NodePaths, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "kube-proxy"), f"--config={paths.proxy_conf}"]


def argv_coredns(paths: NodePaths, bin_dir: Path) -> list[str]:
    return [str(bin_dir / "coredns"), f"-conf={paths.corefile}"]


def ctr(paths: NodePaths, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """containerd's own client on the node's socket, in the Kubernetes namespace."""
    return subprocess.run([DEBIAN["ctr"], f"--address={paths.containerd_sock}", "--namespace=k8s.io", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def image_config_digest(paths: NodePaths, ref: str) -> str | None:
    """The config digest (what Docker calls the image ID) of image `ref` in the node's containerd."""
    listed = ctr(paths, "images", "list", f"name=={ref}").stdout.splitlines()[1:]
    if not listed:
        return None
    manifest = ctr(paths, "content", "get", listed[0].split()[2])
    return json.loads(manifest.stdout)["config"]["digest"] if manifest.returncode == 0 else None


def import_image(paths: NodePaths, archive: Path, ref: str, config_digest: str) -> None:
    """Import an image archive (OCI layout or `docker save` format) unless the node already has image
    `ref` with that config digest; fails if the archive did not give it."""
    if image_config_digest(paths, ref) == config_digest:
        return
    p = ctr(paths, "images", "import", str(archive))
    if p.returncode != 0:
        raise NodeError(f"importing {archive} failed: {p.stderr.strip()}")
    got = image_config_digest(paths, ref)
    if got != config_digest:
        raise NodeError(f"{archive} did not give image {ref} with config {config_digest} (got {got}):\n{p.stdout}")


# ----------------------------------------------------------------------------------------- teardown
def kill_cgroup(cgroup: str, timeout: float = 15.0) -> None:
    """SIGKILL every process left in the node's pids cgroup (pods, shims), then remove its cgroups."""
    base = CGROUP_FS / "pids" / cgroup
    deadline = time.monotonic() + timeout
    while base.is_dir():
        pids = {int(p) for f in base.rglob("cgroup.procs") for p in f.read_text().split()}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for top in cgroup_dirs(cgroup):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def teardown(node_state: dict[str, Any]) -> None:
    """Remove what the node made: processes (by cgroup), namespaces, links, routes, cgroups, files."""
    net = NodeNet(**node_state["net"])
    kill_cgroup(net.cgroup)
    net_down_names(net.netns, net.host_if)
    shutil.rmtree(node_state["dir"], ignore_errors=True)
    (_machine_dir() / f"{net.netns}.json").unlink(missing_ok=True)


def leftovers(net: NodeNet, root: Path) -> list[str]:
    """What of this node is still on the machine: its network namespace, link, route, cgroups, and mounts
    under its root (empty after a clean teardown). HOST_PATHS are for callers to compare before/after."""
    out = []
    if Path(f"/run/netns/{net.netns}").exists():
        out.append(f"netns {net.netns}")
    if Path(f"/sys/class/net/{net.host_if}").exists():
        out.append(f"link {net.host_if}")
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    out += [f"route {r}" for r in routes.splitlines() if r.startswith(net.pod_cidr)]
    out += [f"cgroup {d}" for d in cgroup_dirs(net.cgroup)]
    mounts = Path("/proc/self/mountinfo").read_text()
    out += [f"mount {line}" for line in mounts.splitlines() if str(Path(root).resolve()) in line]
    return out


def net_state(net: NodeNet) -> dict[str, str]:
    return asdict(net)


@dataclass(frozen=True)
class Node:
    """A running node (the `real_node` fixture): its names and addresses, and its images."""

    net: NodeNet
    paths: NodePaths
    name: str = NODE_NAME

    def import_image(self, archive: Path, ref: str, config_digest: str) -> None:
        import_image(self.paths, Path(archive), ref, config_digest)

    def images(self) -> list[str]:
        return ctr(self.paths, "images", "list", "--quiet").stdout.split()
