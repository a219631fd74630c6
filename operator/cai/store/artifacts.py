"""Artifact directories: upload files, then manifest.json last; read manifests; download with checks.

Manifest (docs/design.md#artifacts): {schemaVersion, kind: dataset|model|report,
producer: {kind, name, stage},
inputs: [{uri, sha256}], files: [{path, sha256, bytes}], metrics, createdAt} plus `inputsDigest`, the
digest of everything the stage's result depends on; a stage whose output manifest carries the same
inputsDigest is skipped (resume).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .fs import filesystem, join, local_path
from .paths import check_manifest_paths, inside

MANIFEST = "manifest.json"
STAGING = ".staging-"  # prefix of the directory a new version is uploaded to before it is moved in place
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(uri: str) -> dict[str, Any] | None:
    """The artifact's manifest, or None when the artifact does not (fully) exist.

    Raises UnsafePathError (a ValueError) when a listed file path would leave the artifact directory.
    """
    fs, path = filesystem(uri)
    target = f"{path}/{MANIFEST}"
    try:
        with fs.open(target, "rb") as f:
            manifest: dict[str, Any] = json.loads(f.read())
    except FileNotFoundError:
        return None
    check_manifest_paths(manifest, f"{uri}/{MANIFEST}")
    return manifest


def manifest_digest(uri: str) -> str | None:
    """sha256 of the artifact's manifest bytes: it pins every file of the artifact."""
    fs, path = filesystem(uri)
    try:
        with fs.open(f"{path}/{MANIFEST}", "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def read_json(uri: str) -> Any | None:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def write_json(uri: str, data: Any) -> None:
    """Write a small JSON document atomically where the filesystem allows (local: rename)."""
    payload = json.dumps(data, indent=2, sort_keys=False).encode()
    lp = local_path(uri)
    if lp is not None:
        lp.parent.mkdir(parents=True, exist_ok=True)
        # A temp file of its own per writer (two writers of one status.json must not share one), in the
        # same directory so the rename is atomic: readers see the old or the new document, never a mix.
        # ("x": created here, with the usual permissions, unlike mkstemp's 0600.)
        tmp = lp.parent / f".{lp.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(payload)
            os.replace(tmp, lp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    fs, path = filesystem(uri)
    with fs.open(path, "wb") as f:
        f.write(payload)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def commit_artifact(
    local_dir: Path,
    uri: str,
    *,
    kind: str,
    producer: dict[str, str],
    inputs: list[dict[str, str]],
    inputs_digest: str,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish every file under `local_dir` at `uri`, then write manifest.json (last, in one write).

    The previous version stays readable while the new one uploads: its manifest is kept, changed files
    are uploaded beside it (a `.staging-*` directory no manifest lists) and moved into place only once
    all of them are there, then the new manifest replaces the old one. An upload that dies half-way
    (store down, pod killed) leaves the previous version intact.
    """
    files: list[dict[str, Any]] = []
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.relative_to(local_dir).parts[0].startswith(STAGING):
            files.append(
                {
                    "path": p.relative_to(local_dir).as_posix(),
                    "sha256": file_digest(p),
                    "bytes": p.stat().st_size,
                }
            )
    manifest = {
        "schemaVersion": SCHEMA_VERSION,
        "kind": kind,
        "producer": producer,
        "inputs": inputs,
        "inputsDigest": inputs_digest,
        "files": files,
        "metrics": metrics or {},
        "createdAt": _now(),
        **(extra or {}),
    }
    try:
        old = read_manifest(uri)
    except ValueError:
        old = None  # unreadable or unsafe: replaced, and none of its paths is trusted
    target_local = local_path(uri)
    if target_local is None or target_local.resolve() != local_dir.resolve():
        # (A stage that wrote straight into its local output dir has its files in place already.)
        _publish_files(local_dir, uri, files, old)
    write_json(join(uri, MANIFEST), manifest)
    _remove_unlisted(uri, old, files)
    return manifest


def _publish_files(
    local_dir: Path, uri: str, files: list[dict[str, Any]], old: dict[str, Any] | None
) -> None:
    """Upload the files that differ from the previous version to a staging dir, then move them in place."""
    same = {(f["path"], f["sha256"]) for f in (old or {}).get("files", [])}
    todo = [f["path"] for f in files if (f["path"], f["sha256"]) not in same]
    if not todo:
        return
    staging = f"{STAGING}{uuid.uuid4().hex[:12]}"
    target_local = local_path(uri)
    if target_local is not None:
        stage_dir = target_local / staging
        for rel in todo:
            (stage_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_dir / rel, stage_dir / rel)
        for rel in todo:
            (target_local / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage_dir / rel, target_local / rel)  # atomic per file
        shutil.rmtree(stage_dir, ignore_errors=True)
        return
    fs, path = filesystem(uri)
    for rel in todo:
        fs.put_file(str(local_dir / rel), f"{path}/{staging}/{rel}")
    for rel in todo:
        fs.mv(f"{path}/{staging}/{rel}", f"{path}/{rel}")  # S3: a server-side copy, no re-upload
    try:
        fs.rm(f"{path}/{staging}", recursive=True)
    except FileNotFoundError:
        pass  # object stores have no directories: nothing is left once every file moved


def _remove_unlisted(uri: str, old: dict[str, Any] | None, files: list[dict[str, Any]]) -> None:
    """Files of the previous version that the new manifest no longer lists (once it is written)."""
    listed = {f["path"] for f in files}
    stale = [f["path"] for f in (old or {}).get("files", []) if f["path"] not in listed]
    if stale:
        fs, path = filesystem(uri)
        for rel in stale:
            try:
                fs.rm(f"{path}/{rel}")
            except FileNotFoundError:
                pass


def download_artifact(uri: str, dest: Path) -> Path:
    """A local directory holding the artifact's files, checked against its manifest.

    file:// artifacts are used in place. Remote ones are copied to `dest`; files already there with
    the right sha256 are not fetched again. Raises FileNotFoundError when the artifact is absent and
    ValueError on a checksum mismatch or a file path that would leave `dest` (UnsafePathError).
    """
    manifest = read_manifest(uri)
    if manifest is None:
        raise FileNotFoundError(f"artifact {uri} does not exist (no {MANIFEST})")
    lp = local_path(uri)
    if lp is not None:
        return lp
    fs, path = filesystem(uri)
    dest.mkdir(parents=True, exist_ok=True)
    for f in manifest["files"]:
        target = inside(dest, f["path"], f"{uri}/{MANIFEST}")
        if target.exists() and target.stat().st_size == f["bytes"] and file_digest(target) == f["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{path}/{f['path']}", str(target))
        if file_digest(target) != f["sha256"]:
            target.unlink()
            raise ValueError(f"checksum mismatch for {uri}/{f['path']}: the artifact changed or is corrupt")
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return dest
