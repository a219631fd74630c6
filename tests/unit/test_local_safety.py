"""Local runs stay inside their store (issue 12): metadata that becomes directories is validated,
status files are written atomically per writer and reported when damaged, one run per resource."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cai.api.manifest import parse_resource
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
