"""The tree stays lint-clean: `ruff check .`, `mypy` and shellcheck (pinned in the dev extra) with pyproject's settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert path, f"{name} is not installed (it is in the dev extra: make env)"
    return path


def test_ruff_finds_nothing():
    r = subprocess.run([_tool("ruff"), "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_mypy_finds_nothing():
    """Types are checked over the whole package, strictly on api, pipeline, store and controller
    (pyproject's [tool.mypy]); the cache lives outside the checkout."""
    r = subprocess.run([_tool("mypy"), "--cache-dir", str(Path(tempfile.gettempdir()) / "cai-mypy-cache")], cwd=ROOT,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_shellcheck_finds_nothing_in_the_projects_scripts():
    scripts = subprocess.run(["git", "ls-files", "*.sh"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "bench/gpu_check.sh" in scripts
    r = subprocess.run([_tool("shellcheck"), *scripts], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
