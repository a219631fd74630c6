"""Copies of model directories from object storage (`s3://...`, `file://...`) in the model cache.

A directory with a `manifest.json` (as stages publish them) is copied file by file and each file's
sha256 checked against the manifest; a directory without one is refused (it may be half-uploaded).
A record of what was copied (`.cai-source.json`) lets later calls reuse the copy without re-downloading.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.models.cache import CHUNK, ModelResolveError, build_atomically, models_dir
from cai.models.refs import local_dir_problem
from cai.store import MANIFEST, UnsafePathError, file_digest, filesystem, safe_relpath

if TYPE_CHECKING:
    import fsspec

# Kept next to a copied model: where it came from and each file's sha256/size/mtime.
SOURCE_RECORD = ".cai-source.json"


def uri_cache_dir(uri: str) -> Path:
    """Where the copy of the model directory at `uri` lives in the cache."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.rstrip("/").rsplit("/", 1)[-1])[:48] or "model"
    return models_dir() / "uri" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


def _safe_relpath(rel: str, uri: str) -> str:
    try:
        return safe_relpath(rel, f"{uri}/{MANIFEST}")
    except UnsafePathError as exc:
        raise ModelResolveError(str(exc)) from exc


def _remote_files(
    fs: fsspec.AbstractFileSystem, root: str, uri: str
) -> tuple[dict[str, dict[str, Any]], dict]:
    """{relpath: {sha256, bytes}} from the directory's manifest.

    A directory without a manifest is refused rather than listed: a listing cannot tell a finished
    upload from one still in progress (or one that died half-way), and offers no checksums.
    """
    try:
        with fs.open(f"{root}/{MANIFEST}", "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ModelResolveError(
            f"model {uri}: no {MANIFEST} there, so it is absent or still being uploaded (models in object "
            f"storage are read only once their {MANIFEST} is written; for a local directory without one, "
            "give its plain path instead of a file:// URI)"
        ) from None
    except ValueError as exc:
        raise ModelResolveError(f"{uri}/{MANIFEST} is not valid JSON: {exc}") from exc
    kind = manifest.get("kind", "model")
    if kind != "model":
        raise ModelResolveError(f"{uri} holds a {kind!r} artifact, not a model")
    files = {}
    for entry in manifest.get("files", []):
        rel = _safe_relpath(str(entry.get("path", "")), uri)
        if not isinstance(entry.get("sha256"), str):
            raise ModelResolveError(f"{uri}/{MANIFEST}: file {rel!r} has no sha256")
        files[rel] = {"sha256": entry["sha256"], "bytes": entry.get("bytes")}
    return files, manifest


def _cached_copy_matches(dest: Path, uri: str, remote: dict[str, dict[str, Any]]) -> bool:
    """True when `dest` holds exactly what `remote` describes, without re-downloading.

    Every file's sha256 must match the manifest; a file whose size/mtime still equal what we
    recorded when we wrote it is trusted without re-hashing (hashing 500 MB on every load is slow).
    """
    try:
        record = json.loads((dest / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    if record.get("uri") != uri or set(record.get("files", {})) != set(remote):
        return False
    for rel, want in remote.items():
        have = record["files"][rel]
        local = dest / rel
        try:
            st = local.stat()
        except OSError:
            return False
        if want.get("bytes") is not None and st.st_size != want["bytes"]:
            return False
        if "sha256" in want and have.get("sha256") != want["sha256"]:
            return False
        touched = st.st_size != have.get("bytes") or st.st_mtime_ns != have.get("mtime_ns")
        # Touched since we wrote it: trust only a fresh hash.
        if touched and file_digest(local) != have.get("sha256"):
            return False
    return True


def _download_verified(fs: fsspec.AbstractFileSystem, root: str, uri: str, remote: dict[str, dict[str, Any]],
                       manifest: dict | None, tmp: Path) -> None:
    record: dict[str, Any] = {"uri": uri, "files": {}}
    for rel, want in sorted(remote.items()):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        # Hash while copying: one pass over each (possibly large) file.
        with fs.open(f"{root}/{rel}", "rb") as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(CHUNK), b""):
                h.update(block)
                dst.write(block)
        digest, size = h.hexdigest(), target.stat().st_size
        if "sha256" in want and digest != want["sha256"]:
            raise ModelResolveError(
                f"checksum mismatch for {uri}/{rel}: manifest says sha256 {want['sha256'][:12]}…, "
                f"downloaded {digest[:12]}… (the file is corrupt or changed after the manifest was written)"
            )
        if want.get("bytes") is not None and size != want["bytes"]:
            raise ModelResolveError(
                f"size mismatch for {uri}/{rel}: manifest says {want['bytes']} bytes, got {size}"
            )
        record["files"][rel] = {"sha256": digest, "bytes": size, "mtime_ns": target.stat().st_mtime_ns}
    if manifest is not None:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    problem = local_dir_problem(tmp)
    if problem:
        raise ModelResolveError(f"model {uri}: {problem.replace(str(tmp), 'the directory')}")
    (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2))


def resolve_uri(uri: str) -> Path:
    """A verified local copy of the model directory at `uri` (s3:// or file://) in the cache."""
    fs, root = filesystem(uri)  # endpoint and credentials from env
    remote, manifest = _remote_files(fs, root, uri)
    dest = uri_cache_dir(uri)
    return build_atomically(
        dest,
        lambda tmp: _download_verified(fs, root, uri, remote, manifest, tmp),
        lambda p: _cached_copy_matches(p, uri, remote),
    )
