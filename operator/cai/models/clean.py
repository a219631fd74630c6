"""`cai models clean`: remove prepared and downloaded models from the model cache, all or by reference.

Removes only what the cache holds for models (`models/` and `hf/` under `cai.models.cache.cache_dir()`);
stage checkpoints in `work/` are resumable work, not models, and are kept (the report says so).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from cai.models.builtin import builtin_dir
from cai.models.cache import cache_dir, models_dir
from cai.models.copies import uri_cache_dir
from cai.models.refs import parse_model_ref


@dataclass(frozen=True)
class CleanResult:
    removed: list[tuple[Path, int]]  # path, bytes
    notes: list[str]  # what was not removed, and why
    failed: bool  # a reference named nothing removable


def size_of(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def hf_cache_dir(repo_id: str) -> Path:
    # huggingface_hub's cache layout (`repo_folder_name`): models--<org>--<name>.
    return cache_dir() / "hf" / ("models--" + repo_id.replace("/", "--"))


def entry_for(ref: str) -> Path:
    """The cache directory of a model reference; ValueError when the reference has none (a plain path)."""
    parsed = parse_model_ref(ref)
    if parsed.scheme == "builtin":
        return builtin_dir(parsed.target)
    if parsed.scheme == "hf":
        return hf_cache_dir(parsed.target)
    if parsed.scheme in ("s3", "file"):
        return uri_cache_dir(parsed.uri)
    raise ValueError(f"{ref}: a local directory is used in place, the cache holds no copy of it")


def _remove(path: Path) -> int:
    size = size_of(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return size


def clean(refs: list[str]) -> CleanResult:
    """Remove the cache entries of `refs`, or every model in the cache when `refs` is empty."""
    removed: list[tuple[Path, int]] = []
    notes: list[str] = []
    failed = False
    if refs:
        for ref in refs:
            try:
                path = entry_for(ref)
            except ValueError as exc:
                notes.append(f"not removed: {exc}")
                failed = True
                continue
            if path.exists():
                removed.append((path, _remove(path)))
            else:
                notes.append(f"{ref}: not in the cache ({path})")
        return CleanResult(removed, notes, failed)
    # One line per model: models/<builtin|uri|downloads>/<entry> and hf/<repo folder>.
    groups = sorted(models_dir().iterdir()) if models_dir().is_dir() else []
    for root in [*groups, cache_dir() / "hf"]:
        if root.is_dir() and not root.is_symlink():
            for child in sorted(root.iterdir()):
                removed.append((child, _remove(child)))
            root.rmdir()
        elif root.exists():
            removed.append((root, _remove(root)))
    work = cache_dir() / "work"
    if work.is_dir() and any(work.iterdir()):
        notes.append(f"kept {work} ({size_of(work) / 1e6:.1f} MB): checkpoints of unfinished stages, "
                     "which the next run resumes from")
    if not removed:
        notes.append(f"no models in the cache ({cache_dir()})")
    return CleanResult(removed, notes, failed)
