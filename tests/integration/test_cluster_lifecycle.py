"""The control plane's own start/stop path, as `make cluster-up`/`cluster-down` use it: contract files,
TLS + token auth, listening only on loopback and the node's own addresses, the machine's kernel settings
untouched by the kubelet, a failing component's log tail, and nothing left running or lying around
afterwards (processes, network namespace, links, routes, mounts, cgroups, files outside the root).

Where it sits: drives tests/cluster/control_plane.py directly (a second, short-lived cluster under a
temporary root), next to the session cluster the other integration tests share.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster import control_plane as cp
from tests.cluster import node as node_mod

pytestmark = pytest.mark.cluster


@pytest.fixture
def short_tmp():
    """A temporary directory with a short path: pytest's tmp_path can be too long for the kubelet's unix
    sockets under the cluster root (a socket path holds 107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="cai-lc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _listening_addrs(pids: set[int]) -> set[str]:
    """Local addresses of TCP sockets in LISTEN state owned by `pids` (from /proc, each in its own
    network namespace)."""
    addrs = set()
    for pid in pids:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        for table, v6 in ((f"/proc/{pid}/net/tcp", False), (f"/proc/{pid}/net/tcp6", True)):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] != "0A" or f[9] not in inodes:  # 0A = LISTEN
                    continue
                ip_hex, port_hex = f[1].split(":")
                if v6:
                    ip = "::1" if ip_hex == "00000000000000000000000001000000" else (
                        "::" if set(ip_hex) == {"0"} else ip_hex)
                else:
                    ip = ".".join(str(b) for b in reversed(bytes.fromhex(ip_hex)))
                addrs.add(f"{ip}:{int(port_hex, 16)}")
    return addrs


def _host_state() -> dict[str, str]:
    """The kernel settings the kubelet would change, and whether the paths it writes by default exist."""
    state = {key: Path(f"/proc/sys/{key}").read_text().strip() for key in node_mod.SYSCTLS}
    state.update({path: str(Path(path).exists()) for path in node_mod.HOST_PATHS})
    return state


def test_cli_up_status_down(short_tmp):
    root = short_tmp / "cluster"
    run = lambda *a: subprocess.run([sys.executable, "-m", "tests.cluster.control_plane", *a,
                                     "--root", str(root)], capture_output=True, text=True, timeout=180, check=False,
                                    cwd=cp.REPO)
    before = _host_state()
    up = run("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ready in" in up.stdout
        cluster = cp.Cluster.load(root)
        net = cluster.node.net
        pids = {int(r["pid"]) for r in cluster.procs}
        assert {r["name"] for r in cluster.procs} == {*cp.K8S_COMPONENTS, *cp.NODE_COMPONENTS, "minio", "prometheus"}

        # the kubelet set its kernel settings -- in files bind-mounted over /proc/sys in its own mount
        # namespace, not on this machine
        written = {p.name: p.read_text().strip() for p in (root / "node" / "sysctl").iterdir()}
        assert written["vm.overcommit_memory"] == "1" and written["kernel.panic"] == "10", written
        assert _host_state() == before

        # contract files: the API server and S3 at the node's host-side address, which pods reach too
        kubeconfig = json.loads((root / "kubeconfig").read_text())
        server = kubeconfig["clusters"][0]["cluster"]["server"]
        token = kubeconfig["users"][0]["user"]["token"]
        assert server.startswith(f"https://{net.host_ip}:")
        env = dict(line.removeprefix("export ").split("=", 1) for line in (root / "s3.env").read_text().splitlines())
        assert set(env) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                            "AWS_DEFAULT_REGION", "CAI_S3_BUCKET"}
        script = f"source {shlex.quote(str(root / 's3.env'))}; echo $AWS_ENDPOINT_URL $CAI_S3_BUCKET"
        sourced = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
        assert sourced.stdout.split() == [env["AWS_ENDPOINT_URL"], env["CAI_S3_BUCKET"]]

        # TLS with our CA, token auth + RBAC: no token -> anonymous, forbidden; a wrong one -> 401;
        # the admin's -> 200
        ctx = ssl.create_default_context(cafile=cluster.state["ca_file"])
        code, body = cp.http("GET", server + "/api/v1/namespaces", ca=Path(cluster.state["ca_file"]))
        assert code == 403 and b"system:anonymous" in body, body
        assert cp.http("GET", server + "/api/v1/namespaces", token="nope",
                       ca=Path(cluster.state["ca_file"]))[0] == 401
        req = urllib.request.Request(server + "/api/v1/namespaces", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.URLError):  # the system trust store does not know our CA
            urllib.request.urlopen(server + "/healthz", context=ssl.create_default_context(), timeout=10)

        # every listening socket of every component is on loopback or the node's veth (host or node end)
        addrs = _listening_addrs(pids)
        assert addrs, "found no listening sockets"
        assert all(a.rsplit(":", 1)[0] in ("127.0.0.1", "::1", net.host_ip, net.node_ip) for a in addrs), addrs

        st = run("status")
        assert st.returncode == 0 and "healthy" in st.stdout, st.stdout + st.stderr
        again = run("up")  # a second `up` reuses what runs
        assert again.returncode == 0 and "already up" in again.stdout
        assert {int(r["pid"]) for r in cp.Cluster.load(root).procs} == pids
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert not any(Path(f"/proc/{p}").exists() and cp._cmdline0(p) for p in pids), "processes left running"
    assert not (root / "state.json").exists() and not (root / "kubeconfig").exists()
    assert not (root / "node").exists()
    assert node_mod.leftovers(net, root) == [] and _host_state() == before
    assert run("status").returncode == 1


def test_failing_component_shows_its_log_tail(short_tmp):
    """A component that dies on start fails `up` with its log tail, and the others are stopped."""
    bins = short_tmp / "bin"
    bins.mkdir()
    for b in cp.bin_dir_default().iterdir():
        (bins / b.name).symlink_to(b.resolve())
    (bins / "kube-apiserver").unlink()
    (bins / "kube-apiserver").write_text("#!/bin/sh\necho 'E0101 apiserver: cannot start: injected failure 7f3a' >&2\n"
                                         "exit 1\n")
    (bins / "kube-apiserver").chmod(0o755)
    root = short_tmp / "cluster"
    with pytest.raises(cp.ClusterError) as e:
        cp.up(root, bins, timeout=60, reuse=False, die_with_parent=True)
    msg = str(e.value)
    assert "kube-apiserver exited during start-up" in msg
    assert "injected failure 7f3a" in msg
    state = json.loads((root / "state.json").read_text())
    assert state["ready"] is False
    started = state["procs"]
    assert {"etcd", "kube-apiserver"} <= {r["name"] for r in started}
    assert not any(cp.proc_alive(r) for r in started), "components left running after a failed start"
    assert node_mod.leftovers(node_mod.NodeNet(**state["node"]["net"]), root) == []  # its network went too
    cp.down(root)


def test_a_root_too_long_for_the_node_sockets_is_refused_before_anything_starts(tmp_path):
    root = tmp_path / ("r" * 60) / "cluster"
    with pytest.raises(cp.ClusterError, match="too long for the kubelet's sockets") as e:
        cp.up(root, reuse=False, die_with_parent=True)
    assert str(root) in str(e.value)
    assert not (root / "state.json").exists() and not (root / "node").exists()


def test_port_taken_during_start_is_retried(short_tmp, monkeypatch):
    """Ports are picked free then bound by the components; if something takes one in between, `up`
    starts again on new ports instead of failing the session."""
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real, calls = cp.free_ports, []

    def free_ports(n):
        ports = real(n)
        calls.append(n)
        if len(calls) == 1:
            ports[0] = taken  # etcd's client port, already listened on
        return ports

    monkeypatch.setattr(cp, "free_ports", free_ports)
    messages = []
    root = short_tmp / "cluster"
    try:
        cluster = cp.up(root, reuse=False, die_with_parent=True, log=messages.append)
        assert cluster.healthy()
        assert cluster.state["ports"]["etcd"] != taken
        assert any(m.startswith("a port was taken") and "etcd exited" in m for m in messages), messages
        assert len(calls) == 2
    finally:
        cp.down(root)
        squatter.close()


def test_node_of_a_killed_session_is_removed_by_the_next_start(short_tmp):
    """A session killed without `down` leaves its node's namespace, link, route and cgroups behind (its
    components die with it); the next cluster start on this machine removes them."""
    root = short_tmp / "killed"
    script = ("import sys, time; from pathlib import Path; from tests.cluster import control_plane as cp; "
              "cp.up(Path(sys.argv[1]), reuse=False, die_with_parent=True, owner='pytest'); "
              "print('up', flush=True); time.sleep(600)")
    session = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True,
                               cwd=cp.REPO)
    try:
        assert session.stdout.readline().strip() == "up", "the cluster did not start"
        cluster = cp.Cluster.load(root)
        net = cluster.node.net
    finally:
        session.kill()
        session.wait()
    deadline = time.monotonic() + 30
    while survivors := [r["name"] for r in cluster.procs if cp.proc_alive(r)]:  # the kernel kills them
        assert time.monotonic() < deadline, f"components outlived their session: {survivors}"
        time.sleep(0.2)
    assert node_mod.leftovers(net, root), "nothing was left to clean up: the test shows nothing"

    registration = next(p for p in node_mod._machine_dir().glob("cai-*.json") if net.netns in p.name)
    old = time.time() - 120  # not a cluster that is starting right now
    os.utime(registration, (old, old))
    messages = []
    cp._reap_stale_nodes(messages.append)
    assert node_mod.leftovers(net, root) == [] and not registration.exists()
    assert any(str(root) in m for m in messages), messages
    cp.down(root)
