"""Where artifacts live (docs/design.md#artifacts, a contract):
`<storage-root>/<namespace>/<kind-plural>/<name>/<uid-or-local>/<stage>/`."""

from __future__ import annotations

from .fs import join


def resource_root(root: str, namespace: str, plural: str, name: str, uid: str) -> str:
    return join(root, namespace, plural, name, uid)


def artifact_uri(root: str, namespace: str, plural: str, name: str, uid: str, stage: str) -> str:
    return join(resource_root(root, namespace, plural, name, uid), stage)


def status_uri(root: str, namespace: str, plural: str, name: str, uid: str) -> str:
    """Where the local runner keeps a resource's status (the operator uses the status subresource)."""
    return join(resource_root(root, namespace, plural, name, uid), "status.json")
