"""Local runs stay inside their store (issue 12): metadata that becomes directories is validated,
status files are written atomically per writer and reported when damaged, one run per resource."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cai.api.manifest import load_manifests, parse_resource
from cai.cli import main
from cai.local import runner
from cai.local.lock import resource_lock
from cai.local.runner import run_local
from cai.store import artifact_uri

ROOT = Path(__file__).parents[2]


def _constitution(tmp_path: Path, **metadata: str) -> Path:
    doc = yaml.safe_load((ROOT / "constitutions" / "harmless.yaml").read_text())
    doc["metadata"].update(metadata)
    path = tmp_path / "manifests" / "c.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("field", "value"), [
    ("namespace", "../x"), ("namespace", "a/b"), ("namespace", "UPPER"), ("namespace", "x" * 64),
    ("uid", "../../x"), ("uid", ".."), ("uid", "a/b"), ("uid", ".hidden"),
])
def test_cai_run_refuses_namespace_and_uid_that_are_not_names_before_writing(tmp_path, capsys, field, value):
    manifest = _constitution(tmp_path, **{field: value})
    before = _files(tmp_path)
    assert run_local([str(manifest)], store=str(tmp_path / "store" / "root"), quiet=True) == 1
    out = capsys.readouterr().out
    assert f"metadata.{field}" in out and repr(value) in out
    assert _files(tmp_path) == before  # nothing written: no store, no status.json beside or above it


def test_apiserver_names_and_uids_are_accepted():
    doc = yaml.safe_load((ROOT / "constitutions" / "harmless.yaml").read_text())
    doc["metadata"].update(namespace="team-a", uid="0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
    res, problems = parse_resource(doc, "c.yaml")
    assert problems == [] and res is not None
    assert (res.namespace, res.uid) == ("team-a", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")


@pytest.mark.parametrize("bad", [("..", "critiqueruns", "n", "u", "s"), ("ns", "critiqueruns", "n", "a/../..", "s"),
                                 ("ns", "critiqueruns", "n", "u", "../s")])
def test_store_layout_refuses_segments_that_are_not_single_names(bad):
    with pytest.raises(ValueError, match="cannot be a directory of the store"):
        artifact_uri("file:///store", *bad)


def _run_constitution(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    assert run_local([str(_constitution(tmp_path))], store=str(store), quiet=True) == 0
    return next(store.rglob("status.json"))


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # truncated by a crash or a full disk
    lambda text: "",
    lambda text: "[1, 2]",
    lambda text: '{"apiVersion": "cai.dev/v1alpha1", "kind": "Constitution", "metadata": {"name": "../x"}}',
])
def test_cai_status_reports_a_damaged_status_file_and_exits_non_zero(tmp_path, capsys, damage):
    status = _run_constitution(tmp_path)
    status.write_text(damage(status.read_text()))
    capsys.readouterr()
    rc = main(["status", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"error: damaged status file {status.as_uri()}: " in err and "Traceback" not in err


def _critique_run(tmp_path: Path) -> Path:
    path = tmp_path / "manifests" / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((ROOT / "constitutions" / "harmless.yaml").read_text() + "\n---\n" + json.dumps({
        "apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": "sl"},
        "spec": {"constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random"}}))
    return path


def test_cai_run_starts_afresh_over_a_damaged_status_file_of_its_own(tmp_path, monkeypatch):
    started = []
    # Stage processes that end without publishing: each run stops after the first stage, status saved.
    monkeypatch.setattr(runner, "_run_stage_process", lambda s, progress, tail, log=None: started.append(s.stage) or 0)
    store = tmp_path / "store"
    assert run_local([str(_critique_run(tmp_path))], store=str(store), quiet=True) == 1
    status = next(store.rglob("critiqueruns/sl/local/status.json"))
    status.write_text(status.read_text()[:100])
    assert run_local([str(_critique_run(tmp_path))], store=str(store), quiet=True) == 1
    assert started == ["generate-revisions", "generate-revisions"]
    assert json.loads(status.read_text())["metadata"]["name"] == "sl"  # rewritten whole


def test_a_second_cai_run_of_one_resource_fails_clearly_while_the_first_holds_its_lock(tmp_path, monkeypatch,
                                                                                       capsys):
    started = []
    monkeypatch.setattr(runner, "_run_stage_process", lambda s, progress, tail, log=None: started.append(s.stage) or 0)
    store = tmp_path / "store"
    manifest = _critique_run(tmp_path)
    [res] = [r for r in load_manifests([manifest]) if r.kind == "CritiqueRun"]
    with resource_lock(runner.normalize(str(store)), res):  # what the first `cai run` holds
        assert run_local([str(manifest)], store=str(store), quiet=True) == 1
        assert started == []  # it shares nothing with the first: no stage, no status written
        assert not list(store.rglob("critiqueruns/sl/local/status.json"))
    err = capsys.readouterr().err
    lock = store / "default" / "critiqueruns" / "sl" / "local" / ".run.lock"
    assert f"error: CritiqueRun/sl is already being run into {store.as_uri()} by another `cai run` (lock {lock})" in err
    # Once the first is done the resource runs again.
    assert run_local([str(manifest)], store=str(store), quiet=True) == 1
    assert started == ["generate-revisions"]
