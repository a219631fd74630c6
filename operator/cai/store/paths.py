"""Relative paths taken from manifests: they must stay inside the artifact directory.

A manifest is data that anyone with write access to the store can forge; a path like `../../x` or
`/etc/x` in it would otherwise make a reader write (or read) outside its destination.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any


class UnsafePathError(ValueError):
    """A manifest lists a path that leaves its directory."""


def safe_relpath(rel: str, where: str) -> str:
    """`rel` normalised, or UnsafePathError naming `where` (the manifest) when it could escape."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or "\x00" in rel or p.as_posix() == ".":
        raise UnsafePathError(
            f"{where} lists an unsafe file path {rel!r} (expected a relative path inside the artifact, "
            "without '..', a leading '/' or backslashes)"
        )
    return p.as_posix()


def inside(root: Path, rel: str, where: str) -> Path:
    """`root / rel`, checked to resolve inside `root` (also through symlinks already there)."""
    target = root / safe_relpath(rel, where)
    if not target.resolve().is_relative_to(root.resolve()):
        raise UnsafePathError(f"{where}: file path {rel!r} resolves outside {root}")
    return target


def check_manifest_paths(manifest: dict[str, Any], where: str) -> None:
    """Every `files[].path` of a manifest is a safe relative path (raises UnsafePathError)."""
    files = manifest.get("files", [])
    if not isinstance(files, list):
        raise UnsafePathError(f"{where}: 'files' must be a list, got {type(files).__name__}")
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UnsafePathError(f"{where}: each entry of 'files' needs a string 'path', got {entry!r}")
        safe_relpath(entry["path"], where)
