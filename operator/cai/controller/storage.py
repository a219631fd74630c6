"""Where a run's artifacts go, and what a run may choose itself (pure).

Where it sits: `reconcile` calls `resolve_storage` when it freezes a run's plan, with the namespace's
`cai-storage` ConfigMap (or MISSING) and the operator's config. Order: the namespace's storage (ConfigMap
keys uri, endpoint, secretName, region) → the operator's default; keys a ConfigMap leaves out come from
the operator. A run's `spec.storage` overrides them only inside what the namespace permits
(docs/operator.md#storage-confinement):

* `spec.storage.uri` must be the namespace's storage root, lie below `<root>/<namespace>`, or lie below one
  of the ConfigMap's `allowedURIs`;
* `spec.storage.secretRef` must name the namespace's Secret or one of `allowedSecretNames`;
* `spec.storage.endpoint` must be the namespace's endpoint or one of `allowedEndpoints`.

Whatever the root, artifacts go to `<root>/<namespace>/<kind-plural>/<name>/<uid>/<stage>/`, so a run
writes only under its own namespace's prefix of the storage it was allowed to use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.manifest import Resource
from .config import OperatorConfig
from .observed import Storage

SCHEMES = ("s3://", "file://")
# ConfigMap keys that permit spec.storage overrides (lists: one item per line, or comma-separated).
ALLOWED_URIS, ALLOWED_SECRETS, ALLOWED_ENDPOINTS = "allowedURIs", "allowedSecretNames", "allowedEndpoints"


@dataclass(frozen=True)
class Refused:
    """spec.storage asks for more than the namespace permits: the run is InvalidSpec (field named)."""

    message: str


def _items(value: Any) -> list[str]:
    return [v for v in re.split(r"[\s,]+", str(value or "")) if v]


def _segments(uri: str) -> list[str] | None:
    """The path segments of a storage URI after its scheme, or None when it is not a plain, normalized
    s3:// or file:// URI (empty, `.` or `..` segments, query strings)."""
    if not uri.startswith(SCHEMES) or any(c in uri for c in "?#\\"):
        return None
    scheme, rest = uri.split("://", 1)
    parts = rest.rstrip("/").split("/")
    if scheme == "file":
        if not parts or parts[0] != "":  # file:///abs/path: an empty host
            return None
        parts = parts[1:]
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return [scheme, *parts]


def _within(uri: list[str], root: str) -> bool:
    base = _segments(root)
    return base is not None and uri[: len(base)] == base


def namespace_storage(namespace: str, configmap: Any, config: OperatorConfig) -> Storage | str | None:
    """The namespace's own storage: its cai-storage ConfigMap, else the operator's default.

    A str is a problem with the ConfigMap to report (the run waits); None: nothing is configured.
    """
    if isinstance(configmap, Mapping):
        uri = str(configmap.get("uri") or "").strip()
        if _segments(uri) is None:
            return (f"ConfigMap cai-storage in namespace {namespace}: key uri must be "
                    f"s3://bucket/prefix or file:///path, got {uri!r}")
        return Storage(uri=uri.rstrip("/"), endpoint=configmap.get("endpoint") or config.s3_endpoint,
                       secret_name=configmap.get("secretName") or config.storage_secret,
                       region=configmap.get("region") or None, source="configmap")
    if config.storage_uri:
        return Storage(uri=config.storage_uri.rstrip("/"), endpoint=config.s3_endpoint,
                       secret_name=config.storage_secret, source="operator")
    return None


def resolve_storage(res: Resource, configmap: Any, config: OperatorConfig) -> Storage | Refused | str | None:
    """The run's storage: the namespace's, or its spec.storage where the namespace permits it."""
    own = namespace_storage(res.namespace, configmap, config)
    spec = getattr(res.spec, "storage", None)
    if spec is None:
        return own
    permits = configmap if isinstance(configmap, Mapping) else {}
    where = ("the namespace's ConfigMap cai-storage" if permits
             else f"a ConfigMap cai-storage in namespace {res.namespace}")
    base = own if isinstance(own, Storage) else None
    uri = spec.uri.rstrip("/")
    segments = _segments(uri)
    if segments is None:
        return Refused(f"spec.storage.uri: expected a normalized s3://bucket/prefix or file:///path "
                       f"(no empty, '.' or '..' segments), got {spec.uri!r}")
    roots = _items(permits.get(ALLOWED_URIS))
    own_root = base is not None and (segments == _segments(base.uri)
                                     or _within(segments, f"{base.uri}/{res.namespace}"))
    if not own_root and not any(_within(segments, r) for r in roots):
        allowed = ", ".join([*([base.uri, f"anything below {base.uri}/{res.namespace}"] if base else []),
                             *roots]) or "none"
        return Refused(f"spec.storage.uri: {uri} is not storage namespace {res.namespace} may use (allowed: "
                       f"{allowed}); more roots are permitted by key {ALLOWED_URIS} of {where}")
    secret = spec.secret_ref.name if spec.secret_ref else None
    own_secret = base.secret_name if base else config.storage_secret
    if secret and secret != own_secret and secret not in _items(permits.get(ALLOWED_SECRETS)):
        return Refused(f"spec.storage.secretRef.name: Secret {secret!r} is not one this namespace's runs may "
                       f"use (allowed: {own_secret or 'none'}; more are permitted by key {ALLOWED_SECRETS} "
                       f"of {where})")
    endpoint = spec.endpoint.rstrip("/") if spec.endpoint else None
    own_endpoint = (base.endpoint if base else config.s3_endpoint) or None
    if endpoint and endpoint != (own_endpoint or "").rstrip("/") and endpoint not in [
            e.rstrip("/") for e in _items(permits.get(ALLOWED_ENDPOINTS))]:
        return Refused(f"spec.storage.endpoint: {endpoint} is not an endpoint this namespace's runs may use "
                       f"(allowed: {own_endpoint or 'the default'}; more are permitted by key "
                       f"{ALLOWED_ENDPOINTS} of {where})")
    return Storage(uri=uri, endpoint=endpoint or own_endpoint, secret_name=secret or own_secret,
                   region=base.region if base else None, source="spec")


__all__ = ["Refused", "namespace_storage", "resolve_storage"]
