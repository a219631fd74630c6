"""The store when its S3 server goes away mid-publish: a private MinIO (the real server), killed while a
new version of an artifact uploads and restarted on the same data. The previous version must stay
readable and intact, and the failed publish must raise, not half-succeed."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cai.store import commit_artifact, download_artifact, read_manifest
from tests.cluster import control_plane as cp

pytestmark = pytest.mark.cluster


class PrivateMinio:
    def __init__(self, root: Path):
        self.bin = cp.bin_dir_default() / "minio"
        if not self.bin.exists():
            pytest.fail(f"no minio in {self.bin.parent}: run `make cluster` first", pytrace=False)
        self.data, self.log = root / "data", root / "minio.log"
        self.data.mkdir(parents=True)
        (self.port,) = cp.free_ports(1)
        self.server = cp.S3Server(endpoint=f"http://127.0.0.1:{self.port}", access_key="cai" + secrets.token_hex(6),
                                  secret_key=secrets.token_hex(20), bucket="faults")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MINIO_ROOT_USER": self.server.access_key, "MINIO_ROOT_PASSWORD": self.server.secret_key,
               "MINIO_REGION": self.server.region, "MINIO_UPDATE": "off", "MINIO_BROWSER": "off"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(self.bin), "server", f"--address=127.0.0.1:{self.port}", "--quiet",
                                          str(self.data)], env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if cp.http("GET", f"{self.server.endpoint}/minio/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, cp.log_tail(self.log)
            assert time.monotonic() < deadline, "MinIO not ready in 60 s:\n" + cp.log_tail(self.log)
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def minio(tmp_path, monkeypatch):
    m = PrivateMinio(tmp_path / "minio")
    m.start()
    m.server.client().create_bucket(Bucket=m.server.bucket)
    for key, value in m.server.vars.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # fail within seconds once the server is gone
    yield m
    m.kill()


def _version(root: Path, tag: bytes, big: int) -> Path:
    root.mkdir(parents=True)
    (root / "a.json").write_bytes(b'{"version": "' + tag + b'"}')
    with open(root / "weights.bin", "wb") as f:  # large enough that its upload is still going on when killed
        f.writelines(tag * ((1 << 20) // len(tag)) for _ in range(big))
    return root


def test_minio_killed_mid_publish_keeps_the_previous_version_readable(minio, tmp_path):
    uri = f"s3://{minio.server.bucket}/ns/critiqueruns/r/local/finetune"
    meta = {"kind": "model", "producer": {"kind": "CritiqueRun", "name": "r", "stage": "finetune"}, "inputs": []}
    v1 = _version(tmp_path / "v1", b"one", 4)
    first = commit_artifact(v1, uri, inputs_digest="d1", **meta)
    v2 = _version(tmp_path / "v2", b"two", 300)

    failure: list[BaseException] = []

    def publish():
        try:
            commit_artifact(v2, uri, inputs_digest="d2", **meta)
        except BaseException as e:  # noqa: BLE001 — recorded for the assertion below
            failure.append(e)

    client, key = minio.server.client(), uri.removeprefix(f"s3://{minio.server.bucket}/")
    publisher = threading.Thread(target=publish)
    publisher.start()
    deadline = time.monotonic() + 60
    while not any(".staging-" in o["Key"] for o in client.list_objects_v2(Bucket=minio.server.bucket,
                                                                         Prefix=key).get("Contents", [])):
        assert publisher.is_alive(), f"the publish ended before the server could be killed: {failure}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    minio.kill()  # the big file is uploading now
    publisher.join(300)
    assert not publisher.is_alive()
    assert failure, "a publish whose server died must raise"

    minio.start()  # the same data: what the store holds after the crash
    manifest = read_manifest(uri)
    assert manifest is not None and manifest["inputsDigest"] == "d1" and manifest["createdAt"] == first["createdAt"]
    local = download_artifact(uri, tmp_path / "read")  # checks every file against the manifest
    assert (local / "a.json").read_bytes() == b'{"version": "one"}'
    assert (local / "weights.bin").read_bytes() == (v1 / "weights.bin").read_bytes()

    commit_artifact(v2, uri, inputs_digest="d2", **meta)  # once the server is back, publishing works
    assert read_manifest(uri)["inputsDigest"] == "d2"
    assert (download_artifact(uri, tmp_path / "read2") / "a.json").read_bytes() == b'{"version": "two"}'
