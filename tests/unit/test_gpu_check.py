"""bench/gpu_check.sh (issue 14, item 5) stays runnable while no GPU is lent: its runs are valid
manifests, it refuses a machine without CUDA with one clear line, and it rejects unknown arguments.
Its figures need a GPU (README, "GPU paths"); shellcheck covers the rest (test_lint.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cai.validation import validate_paths

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def test_the_runs_it_applies_are_valid_and_measure_what_it_says(tmp_path):
    runs = subprocess.run(["bash", str(SCRIPT), "--print-runs"], capture_output=True, text=True, timeout=30,
                          check=True).stdout
    (tmp_path / "runs.yaml").write_text(runs)
    resources, problems = validate_paths([ROOT / "constitutions" / "harmless.yaml", tmp_path / "runs.yaml"])
    assert problems == [], [str(p) for p in problems]
    by_name = {r.name: r.spec for r in resources}
    short, long, zero2 = by_name["gpu-sft-short"], by_name["gpu-sft-long"], by_name["gpu-sft-zero2"]
    # the step-difference rates compare runs that differ only in their step counts
    assert short.model_copy(update={"finetune": long.finetune}) == long
    assert long.finetune.model_copy(update={"deepspeed": "zero2"}) == zero2.finetune
    rl_short, rl_long = by_name["gpu-rloo-short"], by_name["gpu-rloo-long"]
    assert rl_short.steps < rl_long.steps and rl_short.model_copy(update={"steps": rl_long.steps}) == rl_long


def test_without_cuda_it_stops_at_once_with_one_clear_line(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--python", sys.executable, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no CUDA device visible" in r.stdout


def test_unknown_arguments_are_named():
    r = subprocess.run(["bash", str(SCRIPT), "--gpus", "8"], capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 2 and "unknown argument --gpus" in r.stderr
