"""`cai status`: a table of locally run resources with their summary condition, stages and outputs."""

from __future__ import annotations

import json
import sys

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..api.manifest import Resource
from ..pipeline.conditions import get_condition
from ..store.fs import normalize


def _summary(res: Resource) -> tuple[str, str, str]:
    c = get_condition(res.status, res.info.summary_condition) if res.status is not None else None
    return (c.status, c.reason, c.message) if c else ("Unknown", "NotStarted", "")


def render_table(resources: list[Resource]) -> Group:
    """One row per resource, then each resource's outputs and headline metrics (long URIs stay readable)."""
    table = Table(title="cai resources")
    for col in ("KIND", "NAME", "CONDITION", "REASON", "STAGES"):
        table.add_column(col, overflow="fold")
    details: list[Text] = []
    for res in resources:
        value, reason, message = _summary(res)
        stages = " ".join(
            f"{s.name}{'✓' if s.completion_time else '…'}"
            for s in (getattr(res.status, "stages", None) or [])
        )
        table.add_row(res.kind, res.name, f"{res.info.summary_condition}={value}", reason, stages)
        lines = []
        if value == "False" and message:
            lines.append(f"  error: {message}")
        outputs = getattr(res.status, "outputs", None)
        if outputs is not None:
            lines += [f"  {k}: {v}" for k, v in outputs.to_wire().items()]
        metrics = getattr(res.status, "metrics", None) or {}
        shown = [f"{k}={v:g}" for k, v in sorted(metrics.items()) if not k.endswith("Seconds")]
        if shown:
            lines.append("  metrics: " + ", ".join(shown))
        if lines:
            details.append(Text(f"{res.display}\n" + "\n".join(lines)))
    return Group(table, *details)


def print_status(store: str, as_json: bool = False) -> int:
    from ..store import filesystem
    from .state import all_stored

    uri = normalize(store)
    fs, root = filesystem(uri)
    # A wrong --store is the usual reason for an empty answer: say which store was read and fail, so
    # scripts do not take "nothing there" for "nothing wrong".
    if not fs.exists(root):
        print(f"error: store {store} ({uri}) does not exist", file=sys.stderr)
        return 1
    resources = all_stored(uri)
    if as_json:
        print(json.dumps([r.to_manifest() for r in resources], indent=2))
    if not resources:
        print(f"error: no resources in store {store} ({uri}); run `cai run ... --store {store}` first",
              file=sys.stderr)
        return 1
    if as_json:
        return 0
    Console().print(render_table(resources))
    return 0
