"""The layering is enforced, not only described (docs/design.md, "Layers").

Statically: pyproject's import-linter contracts (layers, no stage imports another stage, no ML library
imported by the operator's half). At run time: the operator's whole code path is imported and exercised
in a fresh interpreter, and no ML library may be loaded, directly or through a library it calls (the
static contract sees imports inside functions but cannot tell which of them run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ML_LIBRARIES = ("torch", "transformers", "trl", "vllm", "deepspeed", "datasets", "peft", "accelerate")


def test_import_contracts_hold():
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert tool, "import-linter is not installed (it is in the dev extra: make env)"
    r = subprocess.run([tool, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "3 kept, 0 broken" in r.stdout


OPERATOR_PATH = f"""
import importlib, json, pkgutil, sys
import cai
for pkg in ("api", "pipeline", "store", "controller", "local", "preview"):
    module = importlib.import_module(f"cai.{{pkg}}")
    for info in pkgutil.walk_packages(module.__path__, f"cai.{{pkg}}."):
        importlib.import_module(info.name)
import cai.cli, cai.validation

# What the operator does with a run: validate it, plan it, reconcile it, build its Job.
from cai.controller.config import OperatorConfig
from cai.controller.observed import MISSING, Observed
from cai.controller.reconcile import Context, reconcile_run, spec_problems
from cai.pipeline.runstate import constitution_status
from cai.validation import validate_paths

resources, problems = validate_paths([{str(ROOT / "constitutions")!r}, {str(ROOT / "examples")!r}])
assert not problems, problems
by_name = {{(r.kind, r.name): r for r in resources}}
const = by_name[("Constitution", "harmless")]
const.status = constitution_status(const)
run = by_name[("CritiqueRun", "quickstart-sl")]
assert spec_problems(run, OperatorConfig()) == []
ctx = Context(config=OperatorConfig(storage_uri="s3://bucket/root"), lookup=lambda k, n: by_name.get((k, n)))
out = reconcile_run(run, Observed(now=0.0, storage_configmap=MISSING), ctx)
assert [o["kind"] for o in out.creates] == ["ConfigMap", "Job"], out
# What `cai plan` does with the same manifests.
from cai.preview.estimate import plan_resources
assert plan_resources(resources)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {ML_LIBRARIES!r})))
"""


def test_operator_path_loads_no_ml_library():
    r = subprocess.run([sys.executable, "-c", OPERATOR_PATH], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    assert json.loads(r.stdout.splitlines()[-1]) == []
