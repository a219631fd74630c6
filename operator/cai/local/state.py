"""Resource status kept in the store by the local runner (`.../<name>/local/status.json`)."""

from __future__ import annotations

from ..api.kinds import KINDS
from ..api.manifest import Resource, parse_resource
from ..store import filesystem, read_json, status_uri, write_json


def status_location(store: str, res: Resource) -> str:
    return status_uri(store, res.namespace, res.info.plural, res.name, res.uid)


def load_status(store: str, res: Resource):
    """The stored status of `res`, if it was run before with the same spec; else a fresh status."""
    doc = read_json(status_location(store, res))
    fresh = res.info.status()
    if not doc or doc.get("spec") != res.spec.to_wire():
        return fresh
    try:
        return res.info.status.model_validate(doc.get("status") or {})
    except ValueError:
        return fresh


def save(store: str, res: Resource) -> None:
    write_json(status_location(store, res), res.to_manifest())


def stored_resource(store: str, kind: str, namespace: str, name: str) -> Resource | None:
    """A resource run earlier into this store (so later runs may reference it without its manifest)."""
    info = KINDS[kind]
    doc = read_json(status_uri(store, namespace, info.plural, name, "local"))
    if not doc:
        return None
    res, problems = parse_resource(doc, "store", with_status=True)
    return None if problems else res


def all_stored(store: str) -> list[Resource]:
    fs, root = filesystem(store)
    found = []
    for path in sorted(fs.glob(f"{root}/*/*/*/local/status.json")):
        parts = path.split("/")
        plural, namespace, name = parts[-4], parts[-5], parts[-3]
        kind = next((k.kind for k in KINDS.values() if k.plural == plural), None)
        if kind:
            res = stored_resource(store, kind, namespace, name)
            if res is not None:
                found.append(res)
    return found
