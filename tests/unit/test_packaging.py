"""Installing the package as the README says: `pip install .` without extras gives a working `cai` (the
operator image: no torch, no ML stack), and `pip install '.[train]'` a CLI that runs the stages.

Each install builds from a copy of the package source in a temporary directory, so setuptools' build/ and
*.egg-info never land in the checkout; uv's pip interface (warm cache) stands in for pip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    assert Path(found).exists(), "uv is installed by `make env`"
    return found


def readme_install_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- pip-install:begin.*?-->\s*```bash\n(.*?)```\s*<!-- pip-install:end -->", text, re.DOTALL)
    assert m, "README.md: the pip-install block (<!-- pip-install:begin --> ... <!-- pip-install:end -->) is gone"
    return [ln.split("#", 1)[0].strip() for ln in m.group(1).splitlines() if ln.split("#", 1)[0].strip()]


def install(tmp_path: Path, line: str) -> Path:
    """Run one README install line (`pip install ...`) in a copy of the source; returns the venv."""
    assert line.startswith("pip install "), f"README install line {line!r}: expected `pip install ...`"
    src = tmp_path / "src"
    shutil.copytree(ROOT / "operator", src / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    subprocess.run([_uv(), "venv", str(venv), "--python", f"{sys.version_info.major}.{sys.version_info.minor}", "-q"],
                   check=True, env=env)
    args = line.removeprefix("pip install ").replace("'", "").split()
    had_build = (ROOT / "build").exists()
    r = subprocess.run([_uv(), "pip", "install", "--python", str(venv / "bin" / "python"), "-q", *args],
                       capture_output=True, check=False, text=True, env=env, cwd=src, timeout=900)
    assert r.returncode == 0, f"{line}:\n{r.stderr}"
    assert had_build or not (ROOT / "build").exists(), "the install wrote build/ into the checkout"
    return venv


def test_readme_names_both_installs():
    assert readme_install_lines() == ["pip install '.[train]'", "pip install ."]


def test_base_install_runs_cli_without_torch(tmp_path):
    venv = install(tmp_path, readme_install_lines()[1])
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True, check=False).returncode != 0, "torch must not be a base dependency"
    help_ = subprocess.run([str(venv / "bin" / "cai"), "--help"], capture_output=True, check=False, text=True)
    assert help_.returncode == 0 and "validate" in help_.stdout
    ok = subprocess.run([str(venv / "bin" / "cai"), "validate", str(ROOT / "constitutions"), str(ROOT / "examples")],
                        capture_output=True, check=False, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    check = subprocess.run([str(venv / "bin" / "cai"), "crds", "--check", "--out", str(ROOT / "crds")], capture_output=True, check=False, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.slow
def test_train_install_runs_the_stages(tmp_path):
    venv = install(tmp_path, readme_install_lines()[0])
    code = "import torch, transformers, trl, cai.stages; print(torch.__version__)"
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, check=False, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(venv / "bin" / "cai"), "stage", "--help"], capture_output=True, check=False, text=True)
    assert r.returncode == 0 and "--spec" in r.stdout, r.stdout + r.stderr
