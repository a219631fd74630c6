"""CustomResourceDefinitions generated from the typed API (`cai crds`).

Pydantic's JSON schema is turned into a structural OpenAPI v3 schema (refs inlined, nullables
collapsed, Kubernetes extensions kept), rules become `x-kubernetes-validations`, and each run kind gets
the immutability rule (only `spec.suspend` may change). crds/ is never edited by hand.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .base import GROUP, VERSION, ApiModel, nested_model
from .kinds import KINDS, KindInfo

IMMUTABLE_EXCEPT = ("suspend",)


def _models_by_name(root: type[ApiModel]) -> dict[str, type[ApiModel]]:
    """Every ApiModel class reachable from `root`, by class name (the JSON schema's $defs keys)."""
    found: dict[str, type[ApiModel]] = {}
    stack: list[Any] = [root]
    while stack:
        cls = stack.pop()
        if isinstance(cls, type) and issubclass(cls, ApiModel):
            if cls.__name__ in found:
                continue
            found[cls.__name__] = cls
            for f in cls.model_fields.values():
                stack.append(f.annotation)
        else:
            stack.extend(getattr(cls, "__args__", ()) or ())
    return found


def _validations(cls: type[ApiModel]) -> list[dict[str, str]]:
    out = []
    for rule in cls.rules:
        v = {"rule": rule.cel, "message": rule.message}
        if rule.field:
            v["fieldPath"] = "." + rule.field
        out.append(v)
    return out


def _convert(node: Any, defs: dict[str, Any], classes: dict[str, type[ApiModel]]) -> Any:
    if isinstance(node, list):
        return [_convert(n, defs, classes) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").split("/")[-1]
        target = _convert(copy.deepcopy(defs[name]), defs, classes)
        rules = _validations(classes[name]) if name in classes else []
        if rules:
            target["x-kubernetes-validations"] = rules
        target.update(
            {k: _convert(v, defs, classes) for k, v in node.items()}
        )  # description/default beside a $ref
        node = target
    if "anyOf" in node:  # Optional[X] -> X; the field simply may be absent
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union in a structural schema: {options}")
        merged = _convert(options[0], defs, classes)
        merged.update({k: v for k, v in node.items()})
        node = merged
    node.pop("title", None)
    if node.get("default", 0) is None:
        node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[flag] = node[bound]
            node[bound] = True
    if node.get("type") == "object" and "properties" in node:
        node.pop("additionalProperties", None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        node["type"] = "object"
    if node.get("additionalProperties") is True:
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    for key in ("properties",):
        if key in node:
            node[key] = {k: _convert(v, defs, classes) for k, v in node[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _convert(node[key], defs, classes)
    return node


def _wire(value: Any) -> Any:
    if isinstance(value, ApiModel):
        return value.to_wire()
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _add_factory_defaults(schema: dict[str, Any], cls: type[ApiModel]) -> None:
    """Give fields with a default factory (nested objects, lists) a schema default.

    The apiserver then stores them, so CEL rules may compare them without `has()` and
    `kubectl get -o yaml` shows the effective settings.
    """
    props = schema.get("properties", {})
    for name, f in cls.model_fields.items():
        sub = props.get(f.alias or name)
        if sub is None:
            continue
        if f.default_factory is not None:
            sub["default"] = _wire(f.default_factory())  # type: ignore[call-arg]
        nested = nested_model(f.annotation)
        if nested is not None:
            _add_factory_defaults(sub.get("items", sub) if sub.get("type") == "array" else sub, nested)


def openapi_schema(cls: type[ApiModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of `cls` (camelCase names, descriptions, defaults, CEL rules)."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _convert(raw, defs, _models_by_name(cls))
    _add_factory_defaults(schema, cls)
    rules = _validations(cls)
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def immutability_rule(spec_cls: type[ApiModel]) -> dict[str, str]:
    parts = []
    for name, f in spec_cls.model_fields.items():
        alias = f.alias or name
        if alias in IMMUTABLE_EXCEPT:
            continue
        always_present = f.is_required() or f.default is not None or f.default_factory is not None
        if always_present:
            parts.append(f"self.{alias} == oldSelf.{alias}")
        else:
            parts.append(
                f"has(self.{alias}) == has(oldSelf.{alias})"
                f" && (!has(self.{alias}) || self.{alias} == oldSelf.{alias})"
            )
    return {
        "rule": " && ".join(f"({p})" for p in parts),
        "message": "spec is immutable once the run is created; only "
        f"{', '.join('spec.' + e for e in IMMUTABLE_EXCEPT)} may change",
    }


def crd_for(info: KindInfo) -> dict[str, Any]:
    spec_schema = openapi_schema(info.spec)
    spec_schema["description"] = info.description
    if info.is_run:
        spec_schema.setdefault("x-kubernetes-validations", []).append(immutability_rule(info.spec))
    status_schema = openapi_schema(info.status)
    status_schema["description"] = f"Observed state of the {info.kind}, written by the operator."
    columns = [
        {
            k: v
            for k, v in {
                "name": c.name,
                "type": c.type,
                "jsonPath": c.json_path,
                "description": c.description or None,
                "priority": c.priority or None,
            }.items()
            if v is not None
        }
        for c in info.columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "cai-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": [info.short_name],
                "categories": ["cai"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": info.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "cai.dev/v1alpha1"},
                                "kind": {"type": "string", "description": info.kind},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated by `cai crds` from operator/cai/api; do not edit by hand.\n"


def render_all() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    return {
        f"{GROUP}_{info.plural}.yaml": HEADER + yaml.safe_dump(crd_for(info), sort_keys=False, width=100)
        for info in KINDS.values()
    }


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def stale(out_dir: Path) -> list[str]:
    """Names of CRD files in `out_dir` that are missing, different, or no longer generated."""
    expected = render_all()
    problems = [
        n for n, t in expected.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != t
    ]
    if out_dir.exists():
        problems += [p.name for p in out_dir.glob(f"{GROUP}_*.yaml") if p.name not in expected]
    return sorted(problems)
