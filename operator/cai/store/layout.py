"""Where artifacts live (docs/design.md#artifacts, a contract):
`<storage-root>/<namespace>/<kind-plural>/<name>/<uid-or-local>/<stage>/`."""

from __future__ import annotations

from .fs import join


def _segment(value: str, what: str) -> str:
    """One directory name: callers validate names first; this keeps a missed one from leaving the store."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ValueError(f"{what} {value!r} cannot be a directory of the store (expected a single name)")
    return value


def resource_root(root: str, namespace: str, plural: str, name: str, uid: str) -> str:
    return join(root, *(_segment(v, w) for v, w in
                        ((namespace, "namespace"), (plural, "kind"), (name, "name"), (uid, "uid"))))


def artifact_uri(root: str, namespace: str, plural: str, name: str, uid: str, stage: str) -> str:
    return join(resource_root(root, namespace, plural, name, uid), _segment(stage, "stage"))


def status_uri(root: str, namespace: str, plural: str, name: str, uid: str) -> str:
    """Where the local runner keeps a resource's status (the operator uses the status subresource)."""
    return join(resource_root(root, namespace, plural, name, uid), "status.json")
