"""URIs to fsspec filesystems. S3 endpoint and credentials come from env or mounted Secret files.

Credentials are read from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (what a Secret's secretKeyRef
provides in a pod) or, when CAI_S3_CREDENTIALS_DIR is set, from files of those names in that
directory (a mounted Secret volume). They are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec


def _secret(name: str) -> str | None:
    value = os.environ.get(name)
    if value:
        return value
    cred_dir = os.environ.get("CAI_S3_CREDENTIALS_DIR")
    if cred_dir and (Path(cred_dir) / name).is_file():
        return (Path(cred_dir) / name).read_text().strip()
    return None


def s3_options() -> dict[str, Any]:
    endpoint = (
        os.environ.get("CAI_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    opts: dict[str, Any] = {}
    key, secret = _secret("AWS_ACCESS_KEY_ID"), _secret("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        opts.update(key=key, secret=secret)
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    # Path-style addressing works with MinIO/Ceph and with AWS.
    opts["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    return opts


# Stores, model copies and prompt files live on S3-compatible storage or a local filesystem. Other fsspec
# schemes (memory://, http://, ftp://, ...) are refused: they escape the storage confinement the operator
# enforces, and unknown ones would fail later with a raw traceback.
SCHEMES = ("s3", "file")
ACCEPTED = "s3://bucket/prefix, file:///path or a plain path"


class StoreURIError(ValueError):
    """A URI whose scheme the store does not accept; the message names the URI and the accepted forms."""


def check_uri(uri: str) -> str:
    """`uri` normalized (see `normalize`), or StoreURIError when its scheme is not s3:// or file://."""
    uri = normalize(uri)
    scheme = urlparse(uri).scheme
    if scheme not in SCHEMES:
        raise StoreURIError(f"unsupported storage URI {uri!r}: scheme {scheme + '://'!r} is not accepted "
                            f"(expected {ACCEPTED})")
    return uri


def normalize(uri: str) -> str:
    """Plain paths and relative file:// URIs become absolute file:// URIs; other URIs are returned
    without a trailing slash.

    `file://./artifacts` (the CLI default and the README's form) means `./artifacts` under the current
    directory; read by the URI rules its "." would be a host name and the path `/artifacts`.
    """
    if "://" not in uri:
        return Path(uri).expanduser().resolve().as_uri()
    if uri.startswith("file://localhost/"):
        uri = "file://" + uri[len("file://localhost"):]
    elif uri.startswith("file://") and not uri.startswith("file:///"):
        # file://./artifacts (the CLI's default) is relative to the working directory; read as a URI, "."
        # would be a host name and the path /artifacts.
        return Path(uri[len("file://"):]).expanduser().resolve().as_uri()
    return uri.rstrip("/")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of an s3:// or file:// URI (or plain path); StoreURIError otherwise."""
    uri = check_uri(uri)
    if uri.startswith("s3://"):
        return fsspec.filesystem("s3", **s3_options()), uri[len("s3://"):]
    # auto_mkdir: writes create parent directories, as they appear to on S3.
    return fsspec.filesystem("file", auto_mkdir=True), urlparse(uri).path


def join(uri: str, *parts: str) -> str:
    return "/".join([normalize(uri), *(p.strip("/") for p in parts if p)])


def local_path(uri: str) -> Path | None:
    """The local path of a file:// URI (or plain path), else None."""
    uri = normalize(uri)
    return Path(urlparse(uri).path) if uri.startswith("file://") else None
