"""One `cai run` per resource at a time: an flock on a lock file in the resource's store directory.

Two runs of one resource would share its work and output directories and overwrite each other's
manifests and status. The lock is advisory and released by the kernel when the process dies, so a
crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from ..api.manifest import Resource
from ..models.cache import cache_dir
from ..store import local_path, resource_root

LOCK_NAME = ".run.lock"


class ResourceBusyError(RuntimeError):
    """Another process holds the resource's lock; the message names the resource and the lock file."""


@contextmanager
def resource_lock(store: str, res: Resource) -> Iterator[None]:
    """Hold `res`'s lock for the block, or raise ResourceBusyError at once (no waiting on a long run)."""
    root = resource_root(store, res.namespace, res.info.plural, res.name, res.uid)
    local = local_path(root)
    # An s3:// store has no local directory: the lock then lives in the cache (one machine's runs).
    lock = local / LOCK_NAME if local is not None else (
        cache_dir() / "locks" / f"{hashlib.sha256(root.encode()).hexdigest()[:32]}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResourceBusyError(
                f"{res.display} is already being run into {store} by another `cai run` (lock {lock}); "
                "wait for it to finish, then run again (finished stages are kept)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
