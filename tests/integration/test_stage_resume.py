"""A training stage whose pod is lost resumes from the checkpoint it uploaded (real MinIO, real trainer).

What a Job retry, a preempted pod or a suspended-then-resumed run does: a new pod starts the stage
with an empty work directory. The first attempt is killed (SIGKILL, like a node going away) after it has
kept a checkpoint; its local work directory is deleted; the second attempt must restore the newest
complete checkpoint from object storage, resume at that step, publish, and remove the kept copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from cai.pipeline.stagespec import StageSpec
from cai.stages.runtime import _work_dir
from cai.store import commit_artifact, read_manifest
from cai.store.worksync import MARKER, work_uri

pytestmark = pytest.mark.cluster
STEPS_PER_CHECKPOINT = 10


def _complete_checkpoints(fs, work: str) -> list[int]:
    root = work.removeprefix("s3://") + "/dirs/checkpoints"
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for p in found if (m := re.search(rf"checkpoint-(\d+)/{re.escape(MARKER)}0$", p)))


def test_a_killed_training_pod_resumes_from_its_uploaded_checkpoint(s3_server, tmp_path, monkeypatch):
    for key, value in s3_server.vars.items():
        monkeypatch.setenv(key, value)
    prefix = f"s3://{s3_server.bucket}/resume-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "dataset"
    src.mkdir()
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"A careful answer, number {i}."}]} for i in range(160)]
    (src / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    commit_artifact(src, f"{prefix}/dataset", kind="dataset", inputs=[], inputs_digest="d",
                    producer={"kind": "CritiqueRun", "name": "r", "stage": "generate-revisions"})
    spec = StageSpec(stage="finetune", kind="CritiqueRun", name="r",
                     spec={"constitutionRef": {"name": "c"}, "model": "builtin:tiny-random",
                           "finetune": {"epochs": 1, "batchSize": 1, "maxLength": 128}},
                     models={"base": "builtin:tiny-random"}, inputs={"dataset": f"{prefix}/dataset"},
                     output=f"{prefix}/model")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json(by_alias=True))
    env = {**os.environ, "CAI_CHECKPOINT_STEPS": str(STEPS_PER_CHECKPOINT), "CAI_TERMINATION_LOG": str(tmp_path / "term")}
    argv = [sys.executable, "-m", "cai", "stage", "finetune", "--spec", str(spec_file)]
    fs, work = s3_server.filesystem(), work_uri(spec.output)

    first_log = tmp_path / "first.log"
    with open(first_log, "wb") as out:
        first = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(_complete_checkpoints(fs, work)) < 2:  # kept at least twice: rotation is exercised too
        assert first.poll() is None, f"the first attempt ended (rc {first.returncode}) before it could be killed:\n" \
                                     f"{first_log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint was kept in 300 s:\n" + first_log.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the node went away: no clean-up runs
    first.wait(30)
    kept = _complete_checkpoints(fs, work)
    assert len(kept) <= 3, f"rotated checkpoints are pruned from storage too: {kept}"
    total_steps = len(rows)
    assert kept[-1] < total_steps, "the first attempt must have been cut short"
    assert read_manifest(spec.output) is None
    shutil.rmtree(_work_dir(spec))  # the new pod's work directory is empty

    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    log = second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"restored earlier work from {work}" in log and f"checkpoints/checkpoint-{kept[-1]}" in log, log[-3000:]
    assert re.search(rf"resuming from \S+/checkpoint-{kept[-1]}\b", log), log[-3000:]
    manifest = read_manifest(spec.output)
    assert manifest is not None and manifest["producer"]["stage"] == "finetune"
    assert not fs.exists(work.removeprefix("s3://")), "the kept work is removed once the stage has published"
