"""Artifacts appear only when their manifest is written; prompt sources load from every format and
fail with the source named."""

from __future__ import annotations

import csv
import json

import pytest

from cai.data.prompts import PromptSourceError, check_source, load_prompts
from cai.store import commit_artifact, download_artifact, manifest_digest, read_manifest


def test_directory_without_manifest_does_not_exist(tmp_path):
    partial = tmp_path / "stage"
    partial.mkdir()
    (partial / "data.jsonl").write_text("{}\n")
    assert read_manifest(partial.as_uri()) is None
    with pytest.raises(FileNotFoundError):
        download_artifact(partial.as_uri(), tmp_path / "dl")


def test_commit_lists_files_with_digests_and_replaces_old_manifest(tmp_path):
    src = tmp_path / "work"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    uri = (tmp_path / "store" / "x").as_uri()
    m = commit_artifact(src, uri, kind="dataset", producer={"kind": "CritiqueRun", "name": "n", "stage": "s"},
                        inputs=[], inputs_digest="d1", metrics={"rows": 2})
    assert {f["path"]: f["bytes"] for f in m["files"]} == {"a.txt": 5, "sub/b.bin": 2}
    assert read_manifest(uri)["inputsDigest"] == "d1"
    first = manifest_digest(uri)
    (src / "a.txt").write_text("beta")
    commit_artifact(src, uri, kind="dataset", producer={}, inputs=[], inputs_digest="d2")
    assert manifest_digest(uri) != first
    assert (tmp_path / "store" / "x" / "a.txt").read_text() == "beta"


def test_builtin_sets_and_splits():
    train = load_prompts("builtin:red-team")
    test = load_prompts("builtin:red-team", split="test")
    assert len(train) >= 200 and len(test) >= 30
    assert not {p["id"] for p in train} & {p["id"] for p in test}
    assert len(load_prompts("builtin:helpful", limit=5)) == 5


def test_local_formats(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "one"}\n{"prompt": "two", "id": "b"}\n\n')
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "x"])
        w.writerows([["three", 1], ["four", 2]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["five", "six"], "split": ["train", "test"]}), tmp_path / "p.parquet")
    assert [p["prompt"] for p in load_prompts(str(tmp_path / "p.jsonl"))] == ["one", "two"]
    assert load_prompts((tmp_path / "p.jsonl").as_uri())[1]["id"] == "b"
    assert [p["prompt"] for p in load_prompts(str(tmp_path / "p.csv"))] == ["three", "four"]
    assert [p["prompt"] for p in load_prompts(str(tmp_path / "p.parquet"), split="test")] == ["six"]


def test_hf_source_through_datasets_on_a_local_dataset(tmp_path):
    d = tmp_path / "my-dataset"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    rows = load_prompts(f"hf:{d}", limit=2)
    assert [r["prompt"] for r in rows] == ["q0", "q1"]
    with pytest.raises(PromptSourceError, match="cannot load dataset"):
        load_prompts(f"hf:{tmp_path}/absent-dataset")


def test_errors_name_the_source(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert check_source(str(empty)) == f"file is empty: {empty}"
    assert check_source(str(tmp_path / "none.jsonl")).startswith("file not found")
    assert "expected" in check_source("prompts.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text_body": "x"}\n')
    with pytest.raises(PromptSourceError, match=r"line 1 has no prompt column .*found text_body"):
        load_prompts(str(bad))
    with pytest.raises(PromptSourceError, match="no prompts found"):
        load_prompts(str(empty))
    with pytest.raises(PromptSourceError, match="file not found"):
        load_prompts(str(tmp_path / "none.jsonl"))
