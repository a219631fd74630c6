"""Fields that point outside a resource, declared once on the spec types and walked by one function.

A spec field is marked with `Annotated` metadata where it is declared (`api/common.py`, `api/kinds.py`):
`RefersTo("Constitution")` on an `ObjectRef` that names another object of the namespace, `MODEL` on a
model reference string. Prompt sources are found by type (`PromptSource`). `walk` visits the fields of
a typed spec or of its raw wire dict (the operator indexes objects before they parse), skipping
sections switched off with `enabled: false`; the functions below are what the planner, the offline
validator and the controller ask of it. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .base import ApiModel, nested_model


@dataclass(frozen=True)
class RefersTo:
    """Metadata of an `ObjectRef` field: it names an object of `kind` in the same namespace."""

    kind: str


@dataclass(frozen=True)
class _ModelReference:
    """Metadata of a model reference field (`builtin:`, `hf:`, `s3://`, `file://`, a path)."""


MODEL = _ModelReference()


@dataclass(frozen=True)
class Visited:
    path: str  # wire path, e.g. spec.policy.critiqueRunRef
    value: Any  # the field's value: a model when walking a typed spec, plain data when walking a dict
    metadata: tuple[Any, ...]  # the field's Annotated metadata
    model: type[ApiModel] | None  # the ApiModel type the field holds, if any


def walk(cls: type[ApiModel], value: Any, path: str = "spec") -> Iterator[Visited]:
    """Every field under `value` (an instance of `cls`, or its wire dict) that is set, depth first in
    declaration order. A section whose `enabled` field is false is not entered."""
    raw = isinstance(value, dict)
    for name, info in cls.model_fields.items():
        alias = info.alias or name
        child = value.get(alias) if raw else getattr(value, name, None)
        if child is None:
            continue
        sub = nested_model(info.annotation)
        here = Visited(f"{path}.{alias}", child, tuple(info.metadata), sub)
        yield here
        if sub is not None and isinstance(child, dict if raw else ApiModel) and _enabled(child, raw):
            yield from walk(sub, child, here.path)


def _enabled(section: Any, raw: bool) -> bool:
    flag = section.get("enabled", True) if raw else getattr(section, "enabled", True)
    return flag is not False


def references(cls: type[ApiModel], value: Any) -> list[tuple[str, str, str]]:
    """(kind, name, field path) of every object the spec refers to."""
    out = []
    for v in walk(cls, value):
        for meta in v.metadata:
            if isinstance(meta, RefersTo):
                name = v.value.get("name") if isinstance(v.value, dict) else getattr(v.value, "name", None)
                if isinstance(name, str) and name:
                    out.append((meta.kind, name, f"{v.path}.name"))
    return out


def model_refs(cls: type[ApiModel], value: Any) -> list[tuple[str, str]]:
    """(field path, model reference) of every model the spec names directly."""
    return [
        (v.path, v.value)
        for v in walk(cls, value)
        if MODEL in v.metadata and isinstance(v.value, str) and v.value
    ]


def prompt_sources(cls: type[ApiModel], value: Any) -> list[tuple[str, str]]:
    """(field path, source) of every prompt source the spec reads."""
    from .common import PromptSource

    return [
        (f"{v.path}.source", v.value.source)
        for v in walk(cls, value)
        if v.model is not None and issubclass(v.model, PromptSource) and isinstance(v.value, PromptSource)
    ]
