"""`make images`: build the container images here, without a Docker daemon, from package registries only.

Where it sits: mk/images.mk runs it; the image tests (tests/images/) and the test node read what it
writes to `.cache/images/images.json` (the contract: docs/development-cluster.md, "Images").

1. Debian's buildah, podman and mmdebstrap are installed with apt-get when missing.
2. A base image stands in for the public python:3.11-slim (no registry is reachable here): mmdebstrap
   makes a bookworm minbase root with Debian's Python 3.11 (`python`, venv, CA certificates), imported as
   `localhost/cai-base:<key>`, where the key hashes its inputs; an existing one is reused.
3. images/<name>.Dockerfile is built with `buildah bud --isolation chroot --layers` on the overlay driver
   FROM that base (`--build-arg PYTHON_IMAGE=...`: the Dockerfiles users build are the same). RUN steps
   reach PyPI over HTTPS with this machine's CA bundle and pip config mounted read-only; neither is
   committed into an image.
4. Each image is exported as a docker-archive (what `ctr images import` and `podman load` take).

Everything lands outside the clone, in `$CAI_IMAGES_CACHE` (default ~/.cache/cai-images): the buildah
storage (layer cache: after a source change only the package layers are rebuilt), TMPDIR (buildah
stages commits there), the archives. An image whose inputs (build context files, Dockerfile, base, build
arguments) hash to the key recorded for it is not built again. Each build records its wall time, peak
disk of the cache directory and peak memory in images.json.
"""
from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CAI_IMAGES_CACHE") or Path.home() / ".cache" / "cai-images")
STORAGE = ["--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"), "--storage-driver", "overlay"]
OUT = REPO / ".cache" / "images" / "images.json"

TOOLS = ["buildah", "podman", "mmdebstrap", "runc"]  # Debian packages named like their commands
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# What python:3.11-slim-bookworm offers the Dockerfiles: `python` 3.11 with venv (ensurepip), CA
# certificates, apt. Documentation is left out as in the slim images.
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates"]
BASE_DPKG_EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"]
BASE_CONFIG = {"env": ["LANG=C.UTF-8", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
               "cmd": "python3"}
# Read-only into every RUN step: HTTPS to PyPI from inside the build uses this machine's trust store.
HOST_MOUNTS = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf"]

KEEP = int(os.environ.get("CAI_IMAGES_KEEP", "1"))  # archives (and their layer caches) kept per image
IMAGES = {"operator": "cai-operator", "trainer": "cai-trainer", "trainer-gpu": "cai-trainer-gpu"}


def log(msg: str) -> None:
    print(f">> {msg}", flush=True)


def run(*cmd: str, env: dict | None = None, capture: bool = False) -> str:
    r = subprocess.run(cmd, env=env, check=False, text=True,
                       stdout=subprocess.PIPE if capture else None)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout if capture else ""


def ensure_tools() -> None:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if not missing:
        return
    log(f"installing Debian packages {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=600"]
    install = [*apt, "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, check=False).returncode:
        run(*apt, "update")
        run(*install)


def buildah_env() -> dict:
    (CACHE / "tmp").mkdir(parents=True, exist_ok=True)
    # buildah stages each commit in TMPDIR: keep it in the cache, on the same disk, not in /var/tmp.
    return {**os.environ, "TMPDIR": str(CACHE / "tmp")}


def image_id(ref: str) -> str | None:
    r = subprocess.run(["buildah", *STORAGE, "images", "--noheading", "--no-trunc", "--format", "{{.ID}}", ref],
                       capture_output=True, text=True, check=False, env=buildah_env())
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else None


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_image() -> str:
    key = digest(SUITE, MIRROR, BASE_PACKAGES, BASE_DPKG_EXCLUDES, BASE_CONFIG, run("mmdebstrap", "--version",
                                                                                    capture=True).strip())
    ref = f"localhost/cai-base:{SUITE}-{key}"
    if image_id(ref):
        log(f"base image {ref} up to date")
        return ref
    log(f"making base image {ref} with mmdebstrap ({', '.join(BASE_PACKAGES)})")
    env = buildah_env()
    tar = CACHE / "tmp" / f"base-{key}.tar"
    try:
        run("mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt=path-exclude={p}" for p in BASE_DPKG_EXCLUDES), SUITE, str(tar), MIRROR, env=env)
        ctr = run("buildah", *STORAGE, "from", "scratch", capture=True, env=env).strip()
        try:
            run("buildah", *STORAGE, "add", ctr, str(tar), "/", env=env)
            run("buildah", *STORAGE, "config", *(a for e in BASE_CONFIG["env"] for a in ("--env", e)),
                "--cmd", BASE_CONFIG["cmd"], ctr, env=env)
            run("buildah", *STORAGE, "commit", "--rm", ctr, ref, env=env)
        except SystemExit:
            subprocess.run(["buildah", *STORAGE, "rm", ctr], check=False, env=env)
            raise
    finally:
        tar.unlink(missing_ok=True)
    return ref


def dockerignore_allows(rel: str) -> bool:
    """Whether the build context holds `rel` (a path relative to the repository), by .dockerignore's
    rules as this repository writes them: `*`, `!path`, `**/pattern`; the last matching rule wins."""
    keep = True
    for line in (REPO / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        neg, pat = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        hit = (fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/")
               or (pat.startswith("**/") and (fnmatch.fnmatch(Path(rel).name, pat[3:])
                                              or f"/{pat[3:]}/" in f"/{rel}/")))
        if hit:
            keep = neg
    return keep


def context_files() -> list[Path]:
    """The files of the build context (never in it: .git, the venv, build outputs under .cache)."""
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".venv", ".cache", "__pycache__"))
        for name in sorted(names):
            path = Path(root) / name
            if dockerignore_allows(path.relative_to(REPO).as_posix()):
                files.append(path)
    return files


def inputs_key(name: str, args: dict[str, str]) -> str:
    """What an image is built from: the context's files, its Dockerfile, the build arguments and, for a
    local base, that base's image id."""
    h = hashlib.sha256()
    for path in context_files():
        h.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update((REPO / "images" / f"{name}.Dockerfile").read_bytes())
    bases = [image_id(v) for v in args.values() if v.startswith("localhost/")]
    return digest(h.hexdigest(), args, bases)


class DiskSampler:
    """Peak bytes under the cache directory while a build runs (du every few seconds)."""

    def __init__(self, path: Path, every: float = 5.0):
        self.path, self.every, self.peak = path, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            r = subprocess.run(["du", "-sxb", str(self.path)], capture_output=True, text=True, check=False)
            if r.stdout:
                self.peak = max(self.peak, int(r.stdout.split()[0]))
            self._stop.wait(self.every)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


STEP_IMAGE = re.compile(r"^--> (?:Using cache )?([0-9a-f]{11,64})\s*$")


def bud(cmd: list[str], env: dict) -> list[str]:
    """Run `buildah bud`, echoing its output; the ids of the step images it made or reused (the layer
    cache of the next build: prune() keeps them)."""
    ids = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            m = STEP_IMAGE.match(line)
            if m:
                ids.append(m.group(1))
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return ids


def prune(keep: set[str]) -> None:
    """Remove untagged images that no current image's build made or reused: the layers of earlier
    sources and locks, which would otherwise pile up at every change."""
    env = buildah_env()
    for _ in range(10):  # children before parents: a parent is removable once its children are gone
        out = run("buildah", *STORAGE, "images", "--all", "--no-trunc", "--noheading", "--format",
                  "{{.ID}} {{.Name}}", capture=True, env=env)
        stale = [i.removeprefix("sha256:") for i, name in (ln.split(maxsplit=1) for ln in out.splitlines() if ln)
                 if name in ("<none>", "") and not any(i.removeprefix("sha256:").startswith(k) for k in keep)]
        if not stale:
            return
        removed = sum(subprocess.run(["buildah", *STORAGE, "rmi", i], capture_output=True, env=env,
                                     check=False).returncode == 0 for i in stale)
        if not removed:
            return


def build(name: str, ref: str, args: dict[str, str]) -> dict:
    """Build one image unless its archive for these inputs exists (with its entry beside it, and the
    image still in storage): a fresh clone of the same sources finds it too. The last KEEP archives of
    each image are kept (CAI_IMAGES_KEEP=2 spares clones at different commits on one machine rebuilding
    in turn, for another 3 GB of disk)."""
    key = digest(inputs_key(name, args), ref)
    archive = CACHE / "archives" / f"{IMAGES[name]}-{key}.tar"
    meta = archive.with_suffix(".json")
    if archive.exists() and meta.exists():
        old = json.loads(meta.read_text())
        if image_id(old["id"]):
            log(f"{ref} up to date ({key})")
            if image_id(ref) != old["id"]:  # another clone's build took the tag meanwhile
                run("buildah", *STORAGE, "tag", old["id"], ref, env=buildah_env())
            for path in (archive, meta):
                path.touch()
            return old
    log(f"building {ref} from images/{name}.Dockerfile")
    env = buildah_env()
    cmd = ["buildah", *STORAGE, "bud", "--isolation", "chroot", "--layers", "--format", "docker",
           "-f", str(REPO / "images" / f"{name}.Dockerfile"), "-t", ref,
           *(a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")),
           *(a for m in HOST_MOUNTS if Path(m).exists() for a in ("--volume", f"{m}:{m}:ro")),
           str(REPO)]
    start = time.monotonic()
    with DiskSampler(CACHE) as disk:
        layers = bud(cmd, env)
        built = time.monotonic() - start
        iid = image_id(ref)
        assert iid, f"{ref}: built but not in storage"
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        run("buildah", *STORAGE, "push", iid, f"docker-archive:{tmp}:{ref}", env=env)
        tmp.rename(archive)
    entry = {
        "name": IMAGES[name], "ref": ref, "archive": str(archive), "id": iid,
        "bytes": archive.stat().st_size, "key": key, "layers": layers,
        "build": {"seconds": round(built, 1), "export_seconds": round(time.monotonic() - start - built, 1),
                  "peak_cache_bytes": disk.peak,
                  "max_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024},
    }
    meta.write_text(json.dumps(entry, indent=2) + "\n")
    # (cai-trainer-<key>.*, not cai-trainer-gpu-<key>.*)
    mine = [p for p in meta.parent.iterdir() if re.fullmatch(rf"{IMAGES[name]}-[0-9a-f]{{16}}\.\w+", p.name)]
    kept = sorted((p for p in mine if p.suffix == ".json"), key=lambda m: m.stat().st_mtime)[-KEEP:]
    for path in mine:
        if path.with_suffix(".json") not in kept:  # older entries, their archives, leftovers of failed exports
            path.unlink()
    log(f"{ref}: {entry['bytes'] / 1e9:.2f} GB archive, built in {built:.0f} s")
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", required=True, help="e.g. ghcr.io/cai-dev (mk/images.mk's IMAGE_REGISTRY)")
    p.add_argument("--tag", required=True)
    p.add_argument("--gpu", action="store_true", help="also build cai-trainer-gpu (FROM nvidia/cuda: needs a registry)")
    p.add_argument("names", nargs="*", help=f"images to build (default: operator trainer); of {', '.join(IMAGES)}")
    a = p.parse_args(argv)
    names = a.names or ["operator", "trainer", *(["trainer-gpu"] if a.gpu else [])]
    unknown = set(names) - set(IMAGES)
    if unknown:
        p.error(f"unknown image(s) {sorted(unknown)}: expected some of {', '.join(IMAGES)}")
    ensure_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        # One build at a time per cache: prune() must not take the layers of another clone's build.
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_all(names, a.registry, a.tag)


def build_all(names: list[str], registry: str, tag: str) -> int:
    base = base_image()
    entries = {}
    for name in names:
        # The GPU image keeps its CUDA base (CUDA_IMAGE's default): only the Python base is made here.
        args = {} if name == "trainer-gpu" else {"PYTHON_IMAGE": base}
        entries[name] = build(name, f"{registry}/{IMAGES[name]}:{tag}", args)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps([entries[n] for n in IMAGES if n in entries], indent=2) + "\n")
    # Keep the layer cache of every image that has an archive (also those not asked for this time).
    kept = [json.loads(m.read_text()) for m in (CACHE / "archives").glob("*.json")]
    prune({layer for e in kept for layer in e.get("layers", [])})
    log(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
