"""Pure dict merging used by the builders and the status writer.

* `strategic_merge(base, patch)`: Kubernetes strategic-merge-patch semantics for a PodTemplateSpec, so
  `spec.resources.podTemplate` can add a sidecar, an env var or a volume mount without repeating the
  whole pod. Lists with a patch merge key (containers by name, env by name, volumeMounts by mountPath,
  ...) are merged item by item; other lists are replaced, as the apiserver does. The directives
  `$patch: delete` (list item or map) and `$patch: replace` (map) and `null` (remove a key) work.
* `merge_patch(old, new)`: the RFC 7386 JSON merge patch that turns `old` into `new` (None if equal),
  so status is written with one PATCH that also clears fields that went away.
"""

from __future__ import annotations

import copy
from typing import Any

# Field name -> patch merge key, for the lists of a PodTemplateSpec that merge (k8s.io/api core/v1 tags).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
# Lists whose strategy is merge without a key (set semantics, e.g. finalizers): union keeping order.
SET_LISTS = {"finalizers"}


class MergeError(ValueError):
    """The patch cannot be applied (the message names the path)."""


def strategic_merge(base: dict[str, Any], patch: dict[str, Any], path: str = "") -> dict[str, Any]:
    """A new dict: `patch` merged into `base` (neither is modified)."""
    if not isinstance(patch, dict):
        raise MergeError(f"{path or 'podTemplate'}: expected an object, got {type(patch).__name__}")
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return {}
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        sub = f"{path}.{key}" if path else key
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, sub)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key], sub)
        elif isinstance(value, list) and key in SET_LISTS and isinstance(out.get(key), list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif isinstance(value, list) and key in MERGE_KEYS:
            out[key] = [
                copy.deepcopy(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")
            ]
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(base: list[Any], patch: list[Any], merge_key: str, path: str) -> list[Any]:
    out = [copy.deepcopy(item) for item in base]
    index = {item.get(merge_key): i for i, item in enumerate(out) if isinstance(item, dict)}
    deleted: set[Any] = set()
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise MergeError(f"{path}: every item needs its merge key {merge_key!r}")
        key = item[merge_key]
        if item.get("$patch") == "delete":
            deleted.add(key)
            continue
        if key in index:
            out[index[key]] = strategic_merge(out[index[key]], item, f"{path}[{merge_key}={key}]")
        else:
            index[key] = len(out)
            out.append({k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")})
    return [item for item in out if not (isinstance(item, dict) and item.get(merge_key) in deleted)]


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch from `old` to `new`; None when they are equal.

    Lists are replaced whole (merge patch has no list semantics); keys missing from `new` become null.
    """
    if old == new:
        return None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            if isinstance(old[key], dict) and isinstance(value, dict):
                patch[key] = merge_patch(old[key], value)
            else:
                patch[key] = copy.deepcopy(value)
    return patch
