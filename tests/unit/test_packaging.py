"""`pip install .` without extras gives a working `cai` (the operator image): no torch, no ML stack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    assert Path(found).exists(), "uv is installed by `make env`"
    return found


def test_base_install_runs_cli_without_torch(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    subprocess.run([_uv(), "venv", str(venv), "--python", f"{sys.version_info.major}.{sys.version_info.minor}", "-q"],
                   check=True, env=env)
    py = venv / "bin" / "python"
    r = subprocess.run([_uv(), "pip", "install", "--python", str(py), "-q", str(ROOT)], capture_output=True, check=False, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True, check=False).returncode != 0, "torch must not be a base dependency"
    help_ = subprocess.run([str(venv / "bin" / "cai"), "--help"], capture_output=True, check=False, text=True)
    assert help_.returncode == 0 and "validate" in help_.stdout
    ok = subprocess.run([str(venv / "bin" / "cai"), "validate", str(ROOT / "constitutions"), str(ROOT / "examples")],
                        capture_output=True, check=False, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    check = subprocess.run([str(venv / "bin" / "cai"), "crds", "--check", "--out", str(ROOT / "crds")], capture_output=True, check=False, text=True)
    assert check.returncode == 0, check.stderr
