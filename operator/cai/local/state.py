"""Resource status kept in the store by the local runner (`.../<name>/local/status.json`)."""

from __future__ import annotations

from typing import Any

from ..api.kinds import KINDS
from ..api.manifest import Resource, parse_resource
from ..store import filesystem, read_json, status_uri, write_json


class DamagedStatusError(ValueError):
    """A status.json that cannot be read (truncated, not JSON, not a resource); names the file."""


def _read_status(uri: str) -> dict[str, Any] | None:
    """The status document at `uri`, None when there is none; DamagedStatusError when unreadable."""
    try:
        doc = read_json(uri)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError: truncated by a crash or a full disk
        raise DamagedStatusError(f"damaged status file {uri}: {e}") from None
    if doc is not None and not isinstance(doc, dict):
        raise DamagedStatusError(f"damaged status file {uri}: expected a JSON object, "
                                 f"got {type(doc).__name__}")
    return doc


def status_location(store: str, res: Resource) -> str:
    return status_uri(store, res.namespace, res.info.plural, res.name, res.uid)


def load_status(store: str, res: Resource):
    """The stored status of `res`, if it was run before with the same spec; else a fresh status.

    A damaged status file counts as none: the run starts from a fresh status (finished stages are still
    skipped, their manifests decide) and overwrites it.
    """
    try:
        doc = _read_status(status_location(store, res))
    except DamagedStatusError:
        doc = None
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
    """A resource run earlier into this store (so later runs may reference it without its manifest).

    DamagedStatusError when its status file exists but cannot be read back.
    """
    info = KINDS[kind]
    uri = status_uri(store, namespace, info.plural, name, "local")
    doc = _read_status(uri)
    if not doc:
        return None
    res, problems = parse_resource(doc, uri, with_status=True)
    if problems:
        first = problems[0]
        raise DamagedStatusError(f"damaged status file {uri}: {first.path or '-'}: {first.message}")
    return res


def all_stored(store: str, damaged: list[str] | None = None) -> list[Resource]:
    """Every resource run into this store; a damaged status file is appended to `damaged` (when given,
    else raised as DamagedStatusError)."""
    fs, root = filesystem(store)
    found = []
    for path in sorted(fs.glob(f"{root}/*/*/*/local/status.json")):
        parts = path.split("/")
        plural, namespace, name = parts[-4], parts[-5], parts[-3]
        kind = next((k.kind for k in KINDS.values() if k.plural == plural), None)
        if kind:
            try:
                res = stored_resource(store, kind, namespace, name)
            except DamagedStatusError as e:
                if damaged is None:
                    raise
                damaged.append(str(e))
                continue
            if res is not None:
                found.append(res)
    return found
