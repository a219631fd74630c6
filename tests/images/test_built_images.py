"""The images `make images` built, run as a cluster would run them: podman with Debian's runc, as UID/GID
65532 (the images' USER, and the stage pods'), read-only root filesystem with a tmpfs at /tmp (the
chart's emptyDir), no network. The CPU trainer imports torch with no CUDA package installed, trains
with TRL and DeepSpeed ZeRO-2, and reads its baked models offline; the operator image runs `cai`
without torch. Each archive listed in .cache/images/images.json (the contract with the test node,
docs/development-cluster.md) holds its image under the chart's reference.

Runs on the images in the buildah storage of images/build.py; `make test` builds them first.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.images

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

RUN_AS = "65532:65532"
PODMAN_RUN = ["podman", *build.STORAGE, "run", "--rm", "--runtime", "/usr/sbin/runc",
              # runc here fails with the default ulimits (notes: real-node.md); pods get the node's.
              "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000",
              "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--network", "none"]


@pytest.fixture(scope="module")
def images() -> dict[str, dict]:
    assert build.OUT.exists(), f"{build.OUT} is missing: run `make images` first"
    return {e["name"]: e for e in json.loads(build.OUT.read_text())}


def podman(image: dict, *args: str, user: str | None = RUN_AS, entrypoint: str | None = None,
           env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [*PODMAN_RUN, *(["--user", user] if user else []), *(["--entrypoint", entrypoint] if entrypoint else []),
           *(a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")), image["id"], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"{' '.join(r.args[-6:])}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_contract_lists_both_images_with_archives_holding_them(images):
    from cai.controller.config import DEFAULT_IMAGE_REGISTRY

    assert {"cai-operator", "cai-trainer"} <= set(images), images
    version = next(line.split(":", 1)[1].strip().strip('"') for line in
                   (REPO / "charts" / "cai-operator" / "Chart.yaml").read_text().splitlines()
                   if line.startswith("appVersion:"))
    for name in ("cai-operator", "cai-trainer"):
        e = images[name]
        assert e["ref"] == f"{DEFAULT_IMAGE_REGISTRY}/{name}:{version}", e
        archive = Path(e["archive"])
        assert archive.is_absolute() and archive.stat().st_size == e["bytes"], e
        with tarfile.open(archive) as tar:  # docker-archive: manifest.json names the tag and the config
            manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == [e["ref"]], manifest
        assert manifest[0]["Config"].removesuffix(".json").split(":")[-1] in e["id"], (manifest, e["id"])


@pytest.mark.parametrize("name", ["cai-operator", "cai-trainer"])
def test_image_runs_as_65532_by_default(images, name):
    out = ok(podman(images[name], "-c", "import os; print(os.getuid(), os.getgid(), os.getcwd())",
                    user=None, entrypoint="python"))
    uid, gid, _cwd = out.split()
    assert (uid, gid) == ("65532", "65532"), out


PACKAGE_DIGEST = """
import hashlib, pathlib, cai
root = pathlib.Path(cai.__file__).parent
h = hashlib.sha256()
for f in sorted(p for p in root.rglob("*.py")):
    h.update(f.relative_to(root).as_posix().encode() + b"\\0" + f.read_bytes())
print(h.hexdigest())
"""


@pytest.mark.parametrize("name", ["cai-operator", "cai-trainer"])
def test_image_holds_this_checkouts_package(images, name):
    """The `cai` package in the image is this checkout's: a stale layer cache (a step reused although
    its input changed) would leave an older package behind."""
    here = subprocess.run([sys.executable, "-c", PACKAGE_DIGEST], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "operator")}, cwd=REPO).stdout.strip()
    assert ok(podman(images[name], "-c", PACKAGE_DIGEST, entrypoint="python")).strip() == here


def test_operator_image_runs_cai_without_torch(images):
    op = images["cai-operator"]
    assert "--metrics-port" in ok(podman(op, "operator", "--help"))
    assert "validate" in ok(podman(op, "--help"))
    ok(podman(op, "-c", "import importlib.util as u, cai.controller; assert u.find_spec('torch') is None",
              entrypoint="python"))


def test_trainer_image_entrypoint_is_cai_stage(images):
    out = ok(podman(images["cai-trainer"], "--help"))
    assert "usage: cai stage" in out and "--spec" in out, out


TORCH_ON_CPU = """
import importlib.metadata as md, torch
cuda = sorted(d.metadata["Name"] for d in md.distributions()
              if d.metadata["Name"].lower().startswith(("nvidia-", "triton", "cuda-")))
assert not cuda, f"CUDA packages installed: {cuda}"
assert not torch.cuda.is_available()
layer = torch.nn.Linear(8, 2)
layer(torch.randn(4, 8)).sum().backward()
assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
import deepspeed.comm, deepspeed.runtime.zero.stage_1_and_2  # ZeRO-2
print("ok", torch.__version__)
"""


def test_trainer_image_runs_torch_on_cpu_without_cuda_packages(images):
    assert "ok 2.13.0" in ok(podman(images["cai-trainer"], "-c", TORCH_ON_CPU, entrypoint="python"))


BAKED_MODELS = """
import os, stat
from pathlib import Path
from cai.models.resolve import resolve_model
from transformers import AutoModelForCausalLM, AutoTokenizer
cache = Path(os.environ["CAI_CACHE_DIR"])
assert stat.S_IMODE(cache.stat().st_mode) == 0o1777, oct(cache.stat().st_mode)
for ref in ("builtin:smollm2-135m-instruct", "builtin:tiny-random"):
    path = resolve_model(ref)
    assert path.is_relative_to(cache), path
tok = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-random"))
model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:tiny-random"))
ids = tok("Hello", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=4, do_sample=False)
assert out.shape[1] == ids.shape[1] + 4, out.shape
print("ok")
"""


def test_trainer_image_loads_baked_models_offline(images):
    out = podman(images["cai-trainer"], "-c", BAKED_MODELS, entrypoint="python",
                 env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert ok(out).strip().endswith("ok")


CRITIQUE_RUN = """\
apiVersion: cai.dev/v1alpha1
kind: CritiqueRun
metadata: {name: image-check}
spec:
  constitutionRef: {name: harmless}
  model: builtin:tiny-random
  prompts: {source: builtin:red-team, limit: 2}
  revisions: 1
  fewShotExamples: 0
  generation: {backend: transformers, maxNewTokens: 8, batchSize: 2}
  finetune: {epochs: 1, batchSize: 2, maxLength: 64, deepspeed: zero2}
"""


def test_trainer_image_runs_a_critique_run_with_deepspeed_on_a_read_only_root(images):
    """Both stages of a tiny CritiqueRun, generation then TRL SFT under DeepSpeed ZeRO-2 (one process),
    with only /tmp writable and no network: work directories go through the cache's /tmp symlinks.
    Both manifests exist (ls) only if both stages committed their artifacts; DeepSpeed's own lines are
    read from the finetune stage's log in the store."""
    script = (
        'set -e; printf "%s" "$CRUN" >/tmp/crun.yaml; '
        "cat /opt/constitutions/harmless.yaml >/dev/null; "
        "cai run /opt/constitutions/harmless.yaml /tmp/crun.yaml --store file:///tmp/store; "
        "ls /tmp/store/default/critiqueruns/image-check/local/finetune/manifest.json "
        "/tmp/store/default/critiqueruns/image-check/local/generate-revisions/manifest.json; "
        # `cai run` keeps each stage's own output in the store's log, not on the terminal.
        "cat /tmp/store/default/critiqueruns/image-check/local/logs/finetune.log")
    cmd = [*PODMAN_RUN, "--user", RUN_AS, "--entrypoint", "sh",
           "--volume", f"{REPO / 'constitutions'}:/opt/constitutions:ro",
           *(a for k, v in {"HF_HUB_OFFLINE": "1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "CRUN": CRITIQUE_RUN}.items()
             for a in ("--env", f"{k}={v}")),
           images["cai-trainer"]["id"], "-c", script]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    out = ok(r) + r.stderr
    # DeepSpeed really ran, with the collective op compiled at build time (the image has no compiler).
    assert "deepspeed_shm_comm_op built successfully" in out, out[-3000:]
