"""The README's "Using it" commands, run verbatim in a directory laid out like a clone, with the quickstart
shrunk to the tiny random model (tests/quickstart.py) so the whole block runs at test speed. Lines with a
placeholder (`[REF ...]`, `NAME`, `FILE`) and `cai operator` (it needs a cluster: tests/e2e) are left out."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.control_plane import REPO
from tests.quickstart import small_quickstart

pytestmark = pytest.mark.slow
PLACEHOLDER = re.compile(r"\[|\bNAME\b|\bFILE\b|^cai operator\b")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- using-it:begin.*?-->\s*```bash\n(.*?)```\s*<!-- using-it:end -->", text, re.DOTALL)
    assert m, "README.md: the using-it block (<!-- using-it:begin --> ... <!-- using-it:end -->) is gone"
    lines = [line.split("#", 1)[0].strip() for line in m.group(1).splitlines()]
    return [line for line in lines if line]


def test_the_using_it_commands_work_verbatim(tmp_path):
    shutil.copytree(REPO / "constitutions", tmp_path / "constitutions")
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    quickstart = tmp_path / "examples" / "quickstart"
    for f in quickstart.glob("*.yaml"):
        f.unlink()
    (quickstart / "runs.yaml").write_text(yaml.safe_dump_all(small_quickstart()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    commands = readme_commands()
    runnable = [c for c in commands if not PLACEHOLDER.search(c)]
    assert {c.split()[1] for c in runnable} >= {"validate", "run", "status", "report", "models"}, commands
    outputs = {}
    for command in runnable:
        r = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=1200, check=False)
        assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        outputs[command.split()[1]] = " ".join((r.stdout + r.stderr).split())
    # file://./artifacts is this directory's artifacts/, where every run left its status and outputs
    assert (tmp_path / "artifacts" / "default" / "rlaifruns").is_dir()
    for name in ("quickstart-sl", "quickstart-pm", "quickstart-rl"):
        assert name in outputs["status"], outputs["status"][:2000]
    assert "RL-CAI vs start" in outputs["report"] and "report.html" in outputs["report"]
