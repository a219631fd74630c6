"""`cai run` shows our progress and summaries; library output (DeepSpeed, TRL's step dicts, Triton
notices) goes to the stage's log file, and a failed stage prints that log's last lines and its path
(issue 16). The stage process is a stand-in script: no model is loaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cai.local import runner

REPO = Path(__file__).resolve().parents[2]
OURS = ["[generate-revisions] 12 red-team prompts, 4 rounds", "generate: 3/12 prompts (0.52/s, ETA 17s)"]
LIBRARY = [
    "[2026-12-05 08:00:00,000] [INFO] [real_accelerator.py:254:get_accelerator] Setting ds_accelerator to cpu",
    "{'loss': 1.2345, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.5}",
    "Triton is not available, some optimizations will not be enabled.",
]


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    manifest = tmp_path / "run.yaml"
    manifest.write_text((REPO / "constitutions" / "harmless.yaml").read_text() + "\n---\n" + json.dumps({
        "apiVersion": "cai.dev/v1alpha1", "kind": "CritiqueRun", "metadata": {"name": "sl"},
        "spec": {"constitutionRef": {"name": "harmless"}, "model": "builtin:tiny-random"}}))
    store = tmp_path / "store"

    def go(exit_code: int, extra: list[str]) -> tuple[str, Path]:
        script = tmp_path / "stage.py"
        lines = [*OURS[:1], *LIBRARY, OURS[1], *extra]
        script.write_text(f"import sys\nfor line in {lines!r}:\n    print(line, flush=True)\nsys.exit({exit_code})\n")
        monkeypatch.setattr(runner, "STAGE_COMMAND", [sys.executable, str(script)])
        assert runner.run_local([str(manifest)], store=str(store), quiet=True) == 1
        log = store / "default" / "critiqueruns" / "sl" / "local" / "logs" / "generate-revisions.log"
        return capsys.readouterr().err, log

    return go


def test_library_output_goes_to_the_log_file_only(run):
    # Exit 0 without an artifact: the stage fails for the artifact, not with an exit status.
    err, log = run(0, [])
    for line in OURS:
        assert line in err
    for line in LIBRARY:
        assert line not in err
    assert f"(log: {log})" in " ".join(err.split())
    text = log.read_text()
    assert all(line in text for line in OURS + LIBRARY)


def test_a_failed_stage_prints_the_last_lines_of_its_log(run):
    err, log = run(1, ["Traceback (most recent call last):", "RuntimeError: out of memory", "error: boom"])
    assert f"last lines of {log}:" in err
    for line in [*LIBRARY, "RuntimeError: out of memory"]:
        assert line in err
    assert "stage generate-revisions failed: boom" in err


def test_progress_lines_of_a_stage_count_as_ours(monkeypatch, capsys):
    """The plain progress format and the runner's filter agree (pods and `cai run --quiet` print it)."""
    from cai.progress import ProgressReporter

    monkeypatch.setenv("CAI_PROGRESS", "log")
    monkeypatch.setenv("CAI_PROGRESS_INTERVAL", "0")
    with ProgressReporter("fine-tune", 4, "steps") as p:
        p.update(2)
        p.advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"fine-tune: {i}/4 steps" for i in (0, 2, 3, 4)]
    assert all(runner.is_own_line(line, "finetune") for line in lines)
    assert not any(runner.is_own_line(line, "finetune") for line in LIBRARY)
