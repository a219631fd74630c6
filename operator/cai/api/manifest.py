"""Reading manifests (YAML files and directories) into typed resources, with field-named errors.

Errors come out as `Problem`s: file, Kind/name, field path (camelCase, as written in YAML) and what
was expected — the format `cai validate` prints and `cai run` refuses to start on.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, cast

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from typing_extensions import TypeVar

from .base import API_VERSION, GROUP, ApiModel, nested_model
from .common import ObjectStatus
from .kinds import KINDS, KindInfo, RunCommon, RunStatus

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# metadata.uid becomes a directory of the store's layout: a token that cannot be a path (the apiserver's
# UUIDs match; '/', '..' and leading dots do not).
UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
DNS_LABEL = "expected a DNS-1123 label (lowercase letters, digits, '-', at most 63 characters)"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Problem:
    file: str
    obj: str  # "Kind/name" or "-" when not identifiable
    path: str  # field path, e.g. spec.labeling.clamp
    message: str  # what was expected

    def __str__(self) -> str:
        return f"{self.file}: {self.obj}: {self.path or '-'}: {self.message}"


class ManifestError(Exception):
    """Manifests failed validation; `problems` holds one entry per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


SpecT_co = TypeVar("SpecT_co", bound=ApiModel, default=ApiModel, covariant=True)
StatusT_co = TypeVar("StatusT_co", bound=ObjectStatus, default=ObjectStatus, covariant=True)
S = TypeVar("S", bound=ApiModel)
T = TypeVar("T", bound=ObjectStatus)


@dataclass
class Resource(Generic[SpecT_co, StatusT_co]):
    """A parsed custom resource: identity, typed spec and (optionally) typed status.

    `Resource[CritiqueRunSpec, CritiqueRunStatus]` when the kind is known; a plain `Resource` holds
    some kind's types (`info.spec`, `info.status`) and code narrows with isinstance.
    """

    kind: str
    name: str
    namespace: str
    spec: SpecT_co  # an instance of info.spec
    status: StatusT_co | None = None  # an instance of info.status, once known
    uid: str = "local"
    generation: int = 1
    source: str = "-"  # file it came from
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def info(self) -> KindInfo:
        return KINDS[self.kind]

    def typed(self, spec: type[S], status: type[T]) -> Resource[S, T]:
        """This resource as `Resource[S, T]`, checked: TypeError when it holds other types."""
        if not isinstance(self.spec, spec) or not (self.status is None or isinstance(self.status, status)):
            raise TypeError(f"{self.display} does not hold a {spec.__name__} and a {status.__name__}")
        return cast("Resource[S, T]", self)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def display(self) -> str:
        return f"{self.kind}/{self.name}"

    def to_manifest(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec.to_wire(),
        }
        if self.status is not None:
            doc["status"] = self.status.to_wire()
        return doc


RunResource = Resource[RunCommon, RunStatus]  # any run kind (CritiqueRun, PreferenceModel, RLAIFRun)


def iter_manifest_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus manifest files found recursively (sorted) under directories."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix in MANIFEST_SUFFIXES and f.is_file()))
        else:
            files.append(p)
    return files


# The apiserver stores objects of at most 1.5 MiB (etcd's request limit); bigger ones are refused there.
MAX_OBJECT_BYTES = 3 * 1024 * 1024 // 2
# Read no further than this: a manifest file holds a few objects, each at most MAX_OBJECT_BYTES.
MAX_FILE_BYTES = 16 * 1024 * 1024
# Nodes of one document once YAML aliases are expanded: a 1 KB "billion laughs" file expands to 10^9.
MAX_YAML_NODES = 200_000


class _BoundedLoader(yaml.SafeLoader):  # type: ignore[misc]  # (PyYAML ships no type stubs here)
    """SafeLoader that refuses, before building Python objects, a document whose aliases expand it past
    MAX_YAML_NODES nodes or refer to themselves (both only ever come from hostile or broken input)."""

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under `node` with every alias expanded (shared nodes counted once per use, memoized)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.composer.ComposerError(None, None, "found a recursive alias (a node that contains itself)",
                                          node.start_mark)
    open_.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_) for child in node.value)
    open_.discard(key)
    if size > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"the document expands to more than {MAX_YAML_NODES} nodes (YAML aliases/anchors "
            "repeated in a nested way); write the values out instead", node.start_mark)
    sizes[key] = size
    return size


def _yaml_problem(file: str, e: yaml.YAMLError) -> Problem:
    """A YAML error with its line and column (1-based, as editors count) in the file position."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
    if isinstance(e, yaml.MarkedYAMLError):
        what = " ".join(p for p in (e.context, e.problem) if p)
    else:
        what = str(e).splitlines()[0]
    return Problem(where, "-", "", f"expected valid YAML: {what}")


def _object_problems(file: str, doc: dict[str, Any]) -> tuple[bool, list[Problem]]:
    """(is it a cai.dev object, problems of its identity) for one top-level mapping.

    Objects of other groups (a Namespace or Secret next to the runs) are skipped, unless they look like
    ours: a kind of ours under another group, a group close to cai.dev, or a misspelled apiVersion/kind key.
    """
    kind, meta = doc.get("kind"), doc.get("metadata")
    obj = f"{kind or '?'}/{(meta.get('name') if isinstance(meta, dict) else None) or '?'}"
    problems, typos = [], set()
    for key in ("apiVersion", "kind"):
        if key not in doc:
            keys = {str(k).lower(): str(k) for k in doc}
            near = difflib.get_close_matches(key.lower(), list(keys), n=1, cutoff=0.75)
            if near:
                typos.add(key)
                problems.append(Problem(file, obj, keys[near[0]], f"unknown key; did you mean {key!r}?"))
    api = doc.get("apiVersion")
    group = str(api).split("/")[0] if "/" in str(api) else ""
    if group == GROUP:
        return True, problems
    looks_ours = kind in KINDS or (api is not None and difflib.get_close_matches(group, [GROUP], cutoff=0.7))
    if looks_ours and "apiVersion" not in typos:
        problems.append(Problem(file, obj, "apiVersion",
                                f"expected {API_VERSION} (API group {GROUP}) for kind {kind}, got {api!r}"))
    elif api is None and kind is None and not problems:
        problems.append(Problem(file, obj, "", "expected a Kubernetes object (apiVersion and kind)"))
    return False, problems


def load_documents(paths: Iterable[str | Path]) -> tuple[list[tuple[str, dict[str, Any]]], list[Problem]]:
    """All cai.dev documents of the given files/directories as (file, document), plus read problems.

    Documents of other API groups (a Namespace or Secret next to the runs) are skipped; a file with no
    object at all, a YAML error (with line and column), a document that expands past MAX_YAML_NODES, an
    object larger than the apiserver stores, or an object that looks like ours but is misspelled is a
    problem.
    """
    docs: list[tuple[str, dict[str, Any]]] = []
    problems: list[Problem] = []
    for f in iter_manifest_files(paths):
        name = str(f)
        try:
            if f.stat().st_size > MAX_FILE_BYTES:
                problems.append(Problem(name, "-", "", f"file is larger than {MAX_FILE_BYTES} bytes"))
                continue
            loaded = list(yaml.load_all(f.read_text(), Loader=_BoundedLoader))
        except FileNotFoundError:
            problems.append(Problem(name, "-", "", "file not found"))
            continue
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(name, "-", "", f"cannot read file: {e}"))
            continue
        except yaml.YAMLError as e:
            problems.append(_yaml_problem(name, e))
            continue
        except RecursionError:
            problems.append(Problem(name, "-", "", "expected valid YAML: nested too deeply"))
            continue
        if all(doc is None for doc in loaded):
            problems.append(Problem(name, "-", "", "no objects in this file (expected Kubernetes objects)"))
        for doc in loaded:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                problems.append(
                    Problem(name, "-", "", "expected a mapping (a Kubernetes object) at the top level")
                )
                continue
            ours, probs = _object_problems(name, doc)
            problems.extend(probs)
            if not ours or probs:
                continue  # another tool's object, or one of ours too broken to parse further
            size = len(json.dumps(doc, separators=(",", ":"), default=str))
            if size > MAX_OBJECT_BYTES:
                meta = doc.get("metadata")
                obj = f"{doc.get('kind')}/{meta.get('name', '?') if isinstance(meta, dict) else '?'}"
                problems.append(Problem(name, obj, "", f"object takes {size} bytes as JSON; the apiserver "
                                        f"stores at most {MAX_OBJECT_BYTES} (1.5 MiB)"))
                continue
            docs.append((name, doc))
    return docs, problems


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _expected(err: ErrorDetails, model: type[ApiModel] | None) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field" + (
            f" (expected one of: {', '.join(_fields_at(model, err['loc'][:-1]))})" if model else ""
        )
    if kind == "missing":
        return "required field is missing"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {err.get('input')!r}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {err.get('input')!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {err.get('input')!r}"
    if kind == "string_type":
        return f"expected a string, got {type(err.get('input')).__name__}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected an object (mapping)"
    if kind == "list_type":
        return "expected a list"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {err.get('input')!r}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[
            kind
        ]
        bound = next(iter(ctx.values()))
        return f"expected a value {op} {bound}, got {err.get('input')!r}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_short":
        return "expected a non-empty string"
    if kind == "string_too_long":
        return f"expected at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return f"expected a string matching {ctx.get('pattern')}, got {err.get('input')!r}"
    return str(err["msg"])


def _fields_at(model: type[ApiModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """Field aliases of the model at `loc` (for 'unknown field' hints); [] when not resolvable."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(cur, "model_fields", None)
        if not fields:
            return []
        match = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if match is None:
            return []
        cur = nested_model(match.annotation)
    fields = getattr(cur, "model_fields", None) or {}
    return sorted(f.alias or n for n, f in fields.items())


def validation_problems(
    exc: ValidationError, model: type[ApiModel], file: str, obj: str, prefix: str
) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        problems.append(Problem(file, obj, _format_loc((prefix, *loc)), _expected(err, model)))
    return problems


def parse_resource(
    doc: dict[str, Any], file: str = "-", with_status: bool = False
) -> tuple[Resource | None, list[Problem]]:
    """One manifest document → typed Resource (None if it cannot be built) and its problems."""
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, dict) else None
    obj = f"{kind or '?'}/{name or '?'}"
    problems: list[Problem] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(
            Problem(file, obj, "apiVersion", f"expected {API_VERSION}, got {doc.get('apiVersion')!r}")
        )
    if kind not in KINDS:
        problems.append(Problem(file, obj, "kind", f"expected one of {', '.join(KINDS)}, got {kind!r}"))
        return None, problems
    if not _dns_label(name):
        problems.append(Problem(file, obj, "metadata.name", DNS_LABEL))
    problems.extend(Problem(file, obj, path, msg) for path, msg in _metadata_paths(meta))
    unknown_top = set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"}
    for key in sorted(unknown_top):
        problems.append(
            Problem(file, obj, key, "unknown field (expected apiVersion, kind, metadata, spec, status)")
        )
    info = KINDS[kind]
    spec_doc = doc.get("spec")
    if not isinstance(spec_doc, dict):
        problems.append(Problem(file, obj, "spec", "expected an object (mapping)"))
        return None, problems
    try:
        spec = info.spec.model_validate(spec_doc, by_name=False)  # wire names only, like the apiserver
    except ValidationError as e:
        problems.extend(validation_problems(e, info.spec, file, obj, "spec"))
        return None, problems
    problems.extend(Problem(file, obj, path, msg) for path, msg in rule_violations(spec, "spec"))
    status = None
    if with_status and isinstance(doc.get("status"), dict):
        try:
            status = info.status.model_validate(doc["status"], by_name=False)
        except ValidationError as e:
            problems.extend(validation_problems(e, info.status, file, obj, "status"))
    if any(
        p.path.startswith(("apiVersion", "metadata", "status")) or p.path in unknown_top for p in problems
    ):
        return None, problems
    assert isinstance(name, str)  # a bad name is a metadata problem, returned above
    # Rule violations still yield the resource, so callers can check its references and sources too.
    return (
        Resource(
            kind=kind,
            name=name,
            namespace=meta.get("namespace") or "default",
            spec=spec,
            status=status,
            uid=meta.get("uid") or "local",
            generation=int(meta.get("generation") or 1),
            source=file,
            labels=dict(meta.get("labels") or {}),
        ),
        problems,
    )


_DROPPED = object()


def parse_leniently(doc: dict[str, Any], file: str = "-") -> Resource | None:
    """The resource `doc` describes with its invalid spec fields left out (defaults in their place), or
    None when even that cannot be built. Only for checking, in the same pass as the field errors, what a
    broken object references (constitutions, models, prompt sources): never run it."""
    if doc.get("kind") not in KINDS or not isinstance(doc.get("spec"), dict):
        return None
    doc = copy.deepcopy(doc)
    spec_model = KINDS[doc["kind"]].spec
    for _ in range(5):
        try:
            spec_model.model_validate(doc["spec"], by_name=False)
            return parse_resource(doc, file)[0]
        except ValidationError as e:
            dropped = [_drop(doc["spec"], tuple(err["loc"])) for err in e.errors(include_url=False)]
        if not any(dropped):
            return None
        _purge(doc["spec"])
    return None


def _drop(spec: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Leave out the deepest field of `loc` present in `spec` (a list item becomes _DROPPED, so the
    indices of other errors stay valid until _purge)."""
    parent: Any = None
    key: Any = None
    node: Any = spec
    for part in loc:
        if isinstance(node, dict) and part in node or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            parent, key, node = node, part, node[part]
        else:
            break
    if parent is None or node is _DROPPED:
        return False
    if isinstance(parent, list):
        parent[key] = _DROPPED
    else:
        del parent[key]
    return True


def _purge(node: Any) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _purge(value)
    elif isinstance(node, list):
        node[:] = [v for v in node if v is not _DROPPED]
        for value in node:
            _purge(value)


def _dns_label(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 63 and NAME_RE.match(value) is not None


def _metadata_paths(meta: object) -> list[tuple[str, str]]:
    """Problems with the metadata fields that become directories of the store (namespace, uid)."""
    if not isinstance(meta, dict):
        return [("metadata", "expected an object (mapping)")]
    out = []
    if meta.get("namespace") is not None and not _dns_label(meta["namespace"]):
        out.append(("metadata.namespace", f"{DNS_LABEL}, got {meta['namespace']!r}"))
    uid = meta.get("uid")
    if uid is not None and not (isinstance(uid, str) and UID_RE.match(uid)):
        expected = "expected a token of letters, digits, '-' and '_' (at most 128 characters, like a UUID)"
        out.append(("metadata.uid", f"{expected}, got {uid!r}"))
    return out


def rule_violations(model: ApiModel, path: str) -> list[tuple[str, str]]:
    """Cross-field rules and list-map key uniqueness of `model` and everything nested in it."""
    out: list[tuple[str, str]] = []
    for rule in type(model).rules:
        if rule.check is not None and not rule.transition and not rule.check(model):
            out.append((f"{path}.{rule.field}" if rule.field else path, rule.message))
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        sub = f"{path}.{info.alias or name}"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        map_keys = extra.get("x-kubernetes-list-map-keys")
        if isinstance(map_keys, list) and map_keys and isinstance(value, list):
            keys = [str(k) for k in map_keys]
            seen: set[tuple[Any, ...]] = set()
            for i, item in enumerate(value):
                key = tuple(getattr(item, k) for k in keys)
                if key in seen:
                    out.append(
                        (f"{sub}[{i}].{keys[0]}", f"expected unique {'/'.join(keys)}; {key[0]!r} repeats")
                    )
                seen.add(key)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, ApiModel):
                out.extend(rule_violations(item, f"{sub}[{i}]" if isinstance(value, list) else sub))
    return out


def load_manifests(paths: Iterable[str | Path]) -> list[Resource]:
    """Parse every cai.dev object under `paths`; raise ManifestError listing all problems."""
    docs, problems = load_documents(paths)
    resources = []
    for file, doc in docs:
        res, probs = parse_resource(doc, file)
        problems.extend(probs)
        if res is not None and not probs:
            resources.append(res)
    if problems:
        raise ManifestError(problems)
    return resources
