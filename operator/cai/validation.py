"""Offline validation of manifest sets (`cai validate`, and the first thing `cai run` does).

Checks everything the apiserver would (schema, CEL rules) plus what only a whole set can show:
references between manifests, duplicate names, model references and prompt sources, and the pod
policy's rules that hold in every namespace (pipeline/podpolicy.py; the operator also checks what a
namespace's policy allows). With `local=True` (cai run), files named by paths must also exist here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path

from .api.kinds import RunCommon
from .api.manifest import Problem, Resource, load_documents, parse_leniently, parse_resource
from .pipeline.plan import PLAN_SPECS_LIMIT, Lookup, model_refs, prompt_sources, references
from .pipeline.podpolicy import pod_problems


def check_resources(resources: list[Resource], *, local: bool, known: Lookup | None = None,
                    declared: AbstractSet[tuple[str, str, str]] = frozenset()) -> list[Problem]:
    """Problems visible only across objects. `declared` holds (kind, namespace, name) of objects that
    exist in the set but failed to parse: references to them are not reported again."""
    from .data.prompts import check_source
    from .models.refs import check_model_ref

    problems: list[Problem] = []
    seen: dict[tuple[str, str, str], Resource] = {}
    for res in resources:
        if res.key in seen:
            problems.append(
                Problem(
                    res.source,
                    res.display,
                    "metadata.name",
                    f"expected a unique name; {res.display} is also defined in {seen[res.key].source}",
                )
            )
        seen[res.key] = res
    for res in resources:
        for kind, name, path in references(res):
            if (
                (kind, res.namespace, name) in seen
                or (kind, res.namespace, name) in declared
                or (known is not None and known(kind, name) is not None)
            ):
                continue
            problems.append(
                Problem(
                    res.source,
                    res.display,
                    path,
                    f"expected an existing {kind} named {name!r} (not among the given manifests)",
                )
            )
        for path, ref in model_refs(res):
            issue = check_model_ref(ref, local=local)
            if issue:
                problems.append(Problem(res.source, res.display, path, issue))
        for path, source in prompt_sources(res):
            if not local and not source.startswith(("builtin:", "hf:")):
                continue
            issue = check_source(source)
            if issue:
                problems.append(Problem(res.source, res.display, path, issue))
        problems.extend(_plan_size_problems(res, seen))
        if isinstance(res.spec, RunCommon):
            r = res.spec.resources
            for path, message in pod_problems(r.service_account_name, r.pod_template, None):
                problems.append(Problem(res.source, res.display, path, message))
    return problems


def _wire_bytes(res: Resource) -> int:
    return len(json.dumps(res.spec.to_wire(), separators=(",", ":")))


def _plan_size_problems(res: Resource, seen: dict[tuple[str, str, str], Resource]) -> list[Problem]:
    """The operator keeps a run's stage specs, each with the whole constitution, in one ConfigMap
    (PLAN_SPECS_LIMIT); a run whose plan cannot fit there would be refused only once it is applied."""
    if not res.info.is_run:
        size = _wire_bytes(res) if res.kind == "Constitution" else 0
        if size > PLAN_SPECS_LIMIT:
            return [Problem(res.source, res.display, "spec",
                            f"takes {size} bytes; a run's plan holds at most {PLAN_SPECS_LIMIT} bytes with "
                            "the constitution in every stage: shorten it (few-shot examples)")]
        return []
    out = []
    stages = len(res.info.stages_for(res.spec))
    for kind, name, path in references(res):
        constitution = seen.get((kind, res.namespace, name)) if kind == "Constitution" else None
        if constitution is None:
            continue
        size = stages * (_wire_bytes(constitution) + _wire_bytes(res))
        if size > PLAN_SPECS_LIMIT:
            out.append(Problem(res.source, res.display, path,
                               f"the operator's plan would take about {size} bytes ({stages} stage specs, "
                               f"each with Constitution {name}); at most {PLAN_SPECS_LIMIT} fit: shorten the "
                               "constitution (few-shot examples)"))
    return out


def validate_paths(paths: Iterable[str | Path], *, local: bool = False, check_references: bool = True,
                   known: Lookup | None = None) -> tuple[list[Resource], list[Problem]]:
    docs, problems = load_documents(paths)
    resources, broken = [], []
    for file, doc in docs:
        res, probs = parse_resource(doc, file)
        problems.extend(probs)
        if res is not None:
            resources.append(res)
        elif (partial := parse_leniently(doc, file)) is not None:
            broken.append(partial)  # its references, models and sources are checked in this pass too
    declared = {
        (str(d.get("kind")), str(d["metadata"].get("namespace") or "default"), str(d["metadata"].get("name")))
        for _, d in docs
        if isinstance(d.get("metadata"), dict)
    }
    cross = check_resources(resources + broken, local=local, known=known, declared=declared)
    if not check_references:
        cross = [p for p in cross if "not among the given manifests" not in p.message]
    return resources, problems + cross
