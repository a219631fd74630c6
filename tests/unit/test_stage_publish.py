"""`cai stage` publishes inside its error handling: a store that fails while the artifact is written
still leaves the operator a termination message naming the artifact (issue 12)."""

from __future__ import annotations

import sys
import types

import pytest

from cai.pipeline.stagespec import StageSpec
from cai.stages import runtime
from cai.store import read_manifest


@pytest.fixture
def stage_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "TERMINATION_LOG", tmp_path / "termination-log")
    output = (tmp_path / "store" / "default" / "critiqueruns" / "sl" / "local" / "finetune").as_uri()
    spec = StageSpec(stage="finetune", kind="CritiqueRun", name="sl", spec={"model": "builtin:tiny-random", "constitutionRef": {"name": "c"}},
                     output=output, inputs={})
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json(by_alias=True))

    # A stage that writes one file and ends well, instead of training.
    def run(ctx):
        (ctx.out_dir / "model.bin").write_bytes(b"weights")
        return runtime.StageResult(kind="model")
    monkeypatch.setitem(sys.modules, runtime.STAGES["finetune"][1].module, types.SimpleNamespace(run=run))
    return path


def test_store_failure_while_publishing_leaves_a_termination_message(stage_spec, tmp_path, monkeypatch, capsys):
    def store_down(*args, **kwargs):
        raise OSError("Unable to locate credentials")
    monkeypatch.setattr(runtime, "commit_artifact", store_down)
    assert runtime.run_stage("finetune", str(stage_spec)) == 1
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("cannot publish the artifact to file://") and message.endswith(
        "/finetune: OSError: Unable to locate credentials")
    assert "error: cannot publish the artifact to" in capsys.readouterr().err


def test_published_stage_writes_its_manifest(stage_spec, tmp_path):
    assert runtime.run_stage("finetune", str(stage_spec)) == 0
    assert not (tmp_path / "termination-log").exists()
    assert (tmp_path / "store" / "default" / "critiqueruns" / "sl" / "local" / "finetune" / "manifest.json").exists()


def test_a_failing_rerun_leaves_the_previous_local_version_readable(stage_spec, tmp_path, monkeypatch):
    out = tmp_path / "store" / "default" / "critiqueruns" / "sl" / "local" / "finetune"
    assert runtime.run_stage("finetune", str(stage_spec)) == 0
    first = read_manifest(out.as_uri())

    def fails_half_way(ctx):
        (ctx.out_dir / "model.bin").write_bytes(b"half-written")
        raise RuntimeError("out of memory")
    monkeypatch.setitem(sys.modules, runtime.STAGES["finetune"][1].module, types.SimpleNamespace(run=fails_half_way))
    assert runtime.run_stage("finetune", str(stage_spec), force=True) == 1
    assert read_manifest(out.as_uri()) == first
    assert (out / "model.bin").read_bytes() == b"weights"
