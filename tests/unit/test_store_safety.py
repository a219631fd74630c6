"""The store stays inside its directories and survives faults (issue 12): manifest paths cannot
escape, only s3:// and file:// stores, publishing keeps the previous version readable, local state
writes are atomic and unique per writer."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from cai.cli import main
from cai.data.prompts import check_source
from cai.store import (
    StoreURIError,
    UnsafePathError,
    artifacts,
    commit_artifact,
    download_artifact,
    filesystem,
    local_path,
    read_manifest,
    write_json,
)


def _hand_made_artifact(root: Path, rel: str, payload: bytes = b"owned") -> str:
    """A file:// artifact whose manifest (written by hand, not by commit_artifact) lists `rel`."""
    root.mkdir(parents=True)
    manifest = {"schemaVersion": 1, "kind": "dataset", "inputsDigest": "d",
                "files": [{"path": rel, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root.as_uri()


@pytest.mark.parametrize("rel", ["../../x", "/etc/x", "a/../../x", "a\\..\\x", ""])
def test_manifest_paths_that_leave_the_artifact_are_refused_on_read_and_download(tmp_path, monkeypatch, rel):
    uri = _hand_made_artifact(tmp_path / "store" / "ns" / "stage", rel)
    (tmp_path / "store" / "x").write_bytes(b"owned")  # what `../../x` names, so a fetch would succeed
    with pytest.raises(UnsafePathError, match=r"manifest\.json lists an unsafe file path"):
        read_manifest(uri)
    # Download as from a remote store (file:// is otherwise used in place).
    monkeypatch.setattr(artifacts, "local_path", lambda _uri: None)
    dest = tmp_path / "work" / "inputs" / "in"
    with pytest.raises(UnsafePathError):
        download_artifact(uri, dest)
    assert not (tmp_path / "work" / "x").exists() and not (tmp_path / "x").exists()


def test_download_refuses_a_path_that_resolves_outside_through_a_symlink(tmp_path, monkeypatch):
    uri = _hand_made_artifact(tmp_path / "store" / "stage", "sub/x")
    (tmp_path / "store" / "stage" / "sub").mkdir()
    (tmp_path / "store" / "stage" / "sub" / "x").write_bytes(b"owned")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)  # left by an earlier, hostile download
    monkeypatch.setattr(artifacts, "local_path", lambda _uri: None)
    with pytest.raises(UnsafePathError, match="resolves outside"):
        download_artifact(uri, dest)
    assert list(outside.iterdir()) == []


def test_safe_manifest_paths_download(tmp_path, monkeypatch):
    uri = _hand_made_artifact(tmp_path / "store" / "stage", "sub/./x")
    (tmp_path / "store" / "stage" / "sub").mkdir()
    (tmp_path / "store" / "stage" / "sub" / "x").write_bytes(b"owned")
    monkeypatch.setattr(artifacts, "local_path", lambda _uri: None)
    assert (download_artifact(uri, tmp_path / "dest") / "sub" / "x").read_bytes() == b"owned"


@pytest.mark.parametrize("uri", ["memory://x", "http://example.com/a", "ftp://h/x", "gcs://b/p", "nosuch://x"])
def test_only_s3_and_file_stores_are_accepted(uri):
    with pytest.raises(StoreURIError) as e:
        filesystem(uri)
    assert uri in str(e.value) and "s3://bucket/prefix, file:///path or a plain path" in str(e.value)


def test_cli_store_option_refuses_other_schemes_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        main(["status", "--store", "memory://bucket/x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unsupported storage URI 'memory://bucket/x'" in err and "Traceback" not in err


def test_relative_file_uri_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path("file://./artifacts") == tmp_path.resolve() / "artifacts"
    assert local_path("file://localhost/srv/x") == Path("/srv/x")
    assert filesystem("s3://bucket/p/")[1] == "bucket/p" and local_path("file:///a/b/") == Path("/a/b")


def test_prompt_source_with_another_scheme_is_a_problem_not_a_traceback():
    problem = check_source("http://example.com/prompts.jsonl")
    assert problem is not None and "unsupported storage URI" in problem


def _commit(src: Path, uri: str, digest: str) -> dict:
    return commit_artifact(src, uri, kind="dataset", producer={"stage": "s"}, inputs=[], inputs_digest=digest)


def _v1_then_v2(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "work"
    src.mkdir()
    (src / "a.txt").write_text("alpha-1")
    (src / "b.txt").write_text("beta-1")
    (src / "gone.txt").write_text("only in v1")
    uri = (tmp_path / "store" / "x").as_uri()
    _commit(src, uri, "v1")
    (src / "a.txt").write_text("alpha-2")
    (src / "b.txt").write_text("beta-2")
    (src / "gone.txt").unlink()
    return src, uri


@pytest.mark.parametrize("remote", [True, False])
def test_upload_that_dies_half_way_leaves_the_previous_version_readable(tmp_path, monkeypatch, remote):
    src, uri = _v1_then_v2(tmp_path)
    calls = []

    def dies_on_second_file(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("connection reset (store went down)")
        return real(*args, **kwargs)

    if remote:  # s3-like path: files go through fs.put_file
        monkeypatch.setattr(artifacts, "local_path", lambda _uri: None)
        fs_cls = type(filesystem(uri)[0])
        real = fs_cls.put_file
        monkeypatch.setattr(fs_cls, "put_file", lambda self, *a, **k: dies_on_second_file(self, *a, **k))
    else:
        real = artifacts.shutil.copyfile
        monkeypatch.setattr(artifacts.shutil, "copyfile", dies_on_second_file)
    with pytest.raises(OSError, match="connection reset"):
        _commit(src, uri, "v2")
    monkeypatch.undo()
    assert read_manifest(uri)["inputsDigest"] == "v1"
    monkeypatch.setattr(artifacts, "local_path", lambda _uri: None)  # download and verify every checksum
    old = download_artifact(uri, tmp_path / "reader")
    assert [(old / n).read_text() for n in ("a.txt", "b.txt", "gone.txt")] == ["alpha-1", "beta-1", "only in v1"]


def test_publishing_replaces_the_version_and_leaves_no_staging_or_stale_files(tmp_path, monkeypatch):
    src, uri = _v1_then_v2(tmp_path)
    monkeypatch.setattr(artifacts, "local_path", lambda _uri: None)
    _commit(src, uri, "v2")
    store = tmp_path / "store" / "x"
    assert read_manifest(uri)["inputsDigest"] == "v2"
    assert sorted(p.name for p in store.iterdir()) == ["a.txt", "b.txt", "manifest.json"]
    assert (store / "a.txt").read_text() == "alpha-2"


def test_concurrent_writers_of_one_json_file_do_not_collide(tmp_path):
    """Two writers of one status.json: each has its own temp file, so neither fails nor leaves a mix."""
    target = tmp_path / "ns" / "status.json"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(300):
                write_json(target.as_uri(), {"writer": n, "i": i, "pad": "x" * 2000})
        except BaseException as e:  # noqa: BLE001 — collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["i"] == 299
    assert [p.name for p in target.parent.iterdir()] == ["status.json"]  # no temp file left behind
