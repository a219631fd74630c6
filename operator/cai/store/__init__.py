"""Object store on fsspec (file:// and s3://): artifact directories whose manifest.json is written last.

Readers treat a directory without manifest.json as absent, so a crash mid-upload never exposes a
half-written artifact. Import cost is small (fsspec only; s3fs loads on first s3:// use).
"""

from .artifacts import (
    MANIFEST,
    commit_artifact,
    download_artifact,
    file_digest,
    manifest_digest,
    read_json,
    read_manifest,
    write_json,
)
from .fs import StoreURIError, check_uri, filesystem, join, local_path
from .jsonl import Shard, checkpointed, parse_jsonl, read_jsonl, write_jsonl
from .layout import artifact_uri, resource_root, status_uri
from .paths import UnsafePathError, safe_relpath
from .worksync import WorkSync

__all__ = [
    "MANIFEST",
    "Shard",
    "StoreURIError",
    "UnsafePathError",
    "WorkSync",
    "artifact_uri",
    "check_uri",
    "checkpointed",
    "commit_artifact",
    "download_artifact",
    "file_digest",
    "filesystem",
    "join",
    "local_path",
    "manifest_digest",
    "parse_jsonl",
    "read_json",
    "read_jsonl",
    "read_manifest",
    "resource_root",
    "safe_relpath",
    "status_uri",
    "write_json",
    "write_jsonl",
]
