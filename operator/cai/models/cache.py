"""The model cache: where prepared and downloaded models live, and how a directory is published there.

One root, `$CAI_CACHE_DIR` (default `~/.cache/cai`), shared by every process on the machine:

    models/builtin/<name>/      embedded models, prepared once (`cai.models.builtin`)
    models/uri/<slug>/          copies of s3:// and file:// model directories (`cai.models.copies`)
    hf/                         Hugging Face Hub snapshots (`cai.models.hub`, huggingface_hub's layout)
    work/                       stage checkpoints and scratch (`cai.stages.runtime`)

Every directory is built in a temporary sibling and renamed into place under a file lock, so a
crash never leaves a half-written model and two processes never prepare the same model twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

_LOCK_TIMEOUT_S = 3600.0  # preparing SmolLM2 takes about a minute; waiting longer means a stuck peer
CHUNK = 1 << 20


class ModelResolveError(RuntimeError):
    """A model reference could not be turned into a local model directory (message is user-facing)."""


def cache_dir() -> Path:
    """`$CAI_CACHE_DIR`, else `~/.cache/cai` (read on every call so tests can redirect it)."""
    env = os.environ.get("CAI_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cai"


def models_dir() -> Path:
    return cache_dir() / "models"


def build_atomically(dest: Path, build: Callable[[Path], None], ready: Callable[[Path], bool]) -> Path:
    """Run `build(tmp)` and rename tmp to `dest`, once, even with concurrent callers.

    `ready(dest)` is checked before and again under the lock (another process may have finished
    while we waited). Leftover temp dirs of crashed builds are removed under the lock.
    """
    if ready(dest):
        return dest
    from filelock import FileLock  # ships with huggingface_hub/transformers (train extra)

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock"), timeout=_LOCK_TIMEOUT_S):
        if ready(dest):
            return dest
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        log.info("Building %s in %s (pid %d)", dest, tmp.name, os.getpid())
        try:
            build(tmp)
            _make_readable(tmp)
            if dest.exists():
                # rename() cannot replace a non-empty directory: move the old one aside first.
                old = dest.parent / f".{dest.name}.tmp-old-{os.getpid()}"
                dest.rename(old)
                tmp.rename(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _make_readable(root: Path) -> None:
    """Directories 0755 and files 0644 (minus the umask): mkdtemp creates 0700 and safetensors can
    be written 0600, which would lock out non-root pods reading a cache baked into an image."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for p in root.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
