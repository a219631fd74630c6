"""The object store, prompt sources and model references against a real S3 server (MinIO):
manifests last, checksums verified on download, and `cai run` with an s3:// store."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from cai.store import commit_artifact, download_artifact, read_manifest

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).parents[2]


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.vars.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def prefix(s3_env) -> str:
    return f"s3://{s3_env.bucket}/test-{uuid.uuid4().hex[:8]}"


def test_commit_download_and_checksum(prefix, tmp_path, s3_env):
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "data.jsonl").write_text('{"a": 1}\n')
    (src / "nested" / "w.bin").write_bytes(bytes(range(256)) * 64)
    uri = f"{prefix}/artifact"
    assert read_manifest(uri) is None
    commit_artifact(src, uri, kind="dataset", producer={"kind": "CritiqueRun", "name": "x", "stage": "s"},
                    inputs=[], inputs_digest="abc", metrics={"rows": 1})
    assert read_manifest(uri)["metrics"] == {"rows": 1}
    local = download_artifact(uri, tmp_path / "dl")
    assert (local / "nested" / "w.bin").read_bytes() == (src / "nested" / "w.bin").read_bytes()

    # Corrupt the stored object: the download must notice and refuse it.
    key = uri.removeprefix(f"s3://{s3_env.bucket}/") + "/data.jsonl"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=b'{"a": 2}\n')
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_artifact(uri, tmp_path / "dl2")


def test_partial_upload_is_invisible(prefix, s3_env):
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=prefix.split("/", 3)[3] + "/half/data.jsonl", Body=b"{}")
    assert read_manifest(f"{prefix}/half") is None


def test_prompts_from_s3(prefix, s3_env):
    from cai.data.prompts import check_source, load_prompts

    key = prefix.split("/", 3)[3] + "/prompts.jsonl"
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key,
                               Body="".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)).encode())
    assert [p["prompt"] for p in load_prompts(f"{prefix}/prompts.jsonl", limit=3)] == ["p0", "p1", "p2"]
    assert check_source(f"{prefix}/absent.jsonl").startswith("file not found")


def test_model_from_s3_is_cached_and_verified(prefix, s3_env, tmp_path, monkeypatch):
    from cai.models.resolve import resolve_model

    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    tiny = resolve_model("builtin:tiny-random")
    uri = f"{prefix}/model"
    commit_artifact(tiny, uri, kind="model", producer={"kind": "CritiqueRun", "name": "x", "stage": "finetune"},
                    inputs=[], inputs_digest="m")
    local = resolve_model(uri)
    assert (local / "config.json").exists() and (local / "model.safetensors").stat().st_size == (tiny / "model.safetensors").stat().st_size
    assert resolve_model(uri) == local, "second resolution reuses the verified cache"


def test_cai_run_with_an_s3_store(prefix, s3_env, tmp_path):
    manifest = tmp_path / "crun.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": "s3-sl"},
        "spec": {"constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random", "revisions": 1,
                 "prompts": {"source": "builtin:red-team", "limit": 2}, "fewShotExamples": 0,
                 "generation": {"maxNewTokens": 8}, "finetune": {"enabled": False}},
    }))
    r = subprocess.run([sys.executable, "-m", "cai", "run", str(ROOT / "constitutions" / "harmless.yaml"), str(manifest),
                        "--store", prefix, "--quiet"], capture_output=True, check=False, text=True, env=s3_env.env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert s3_env.secret_key not in r.stdout + r.stderr, "credentials never appear in output"
    manifest_uri = f"{prefix}/default/critiqueruns/s3-sl/local/generate-revisions"
    assert read_manifest(manifest_uri)["metrics"]["chains"] == 2
    status = subprocess.run([sys.executable, "-m", "cai", "status", "--store", prefix], capture_output=True, check=False, text=True,
                            env=s3_env.env)
    assert "s3-sl" in status.stdout and "Succeeded=True" in status.stdout
