"""`cai status`: a table of locally run resources with their summary condition, then each resource's
stages, outputs and metrics.

Readable at any width and when piped: table cells hold single words, so they are never broken (when even
that does not fit, the summary goes into each resource's block instead of a table); URIs and messages are
printed soft-wrapped (one line each, whatever the width, so they can be copied and grepped); metrics are
sorted and laid out across lines without splitting an entry.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..api.manifest import Resource
from ..pipeline.conditions import get_condition
from ..store.fs import normalize

COLUMNS = ("KIND", "NAME", "CONDITION", "REASON")
_TABLE_OVERHEAD = 3 * len(COLUMNS) + 1  # rich's box: a border and one space of padding each side


def _summary(res: Resource) -> tuple[str, str, str]:
    c = get_condition(res.status, res.info.summary_condition) if res.status is not None else None
    return (c.status, c.reason, c.message) if c else ("Unknown", "NotStarted", "")


def _row(res: Resource) -> tuple[str, str, str, str]:
    value, reason, _ = _summary(res)
    return res.kind, res.name, f"{res.info.summary_condition}={value}", reason


def _table(rows: list[tuple[str, str, str, str]], width: int) -> Table | None:
    """The summary table, or None when its cells would have to be broken to fit `width`."""
    widths = [max(len(cell) for cell in column) for column in zip(COLUMNS, *rows, strict=False)]
    if sum(widths) + _TABLE_OVERHEAD > width:
        return None
    table = Table(title="cai resources")
    for col, w in zip(COLUMNS, widths, strict=True):
        table.add_column(col, no_wrap=True, min_width=w)
    for row in rows:
        table.add_row(*row)
    return table


def _metric_entries(metrics: dict[str, float]) -> list[str]:
    """Sorted `key=value` entries; a figure with its 95% CI (`<key>CiLow`, `<key>CiHigh`) is one entry,
    `key=value [low, high]`, so an interval is never split from its figure or over two lines."""
    shown = {k: v for k, v in metrics.items() if not k.endswith("Seconds")}
    with_ci = {k for k in shown if k + "CiLow" in shown and k + "CiHigh" in shown}
    folded = {k + suffix for k in with_ci for suffix in ("CiLow", "CiHigh")}
    entries = []
    for key in sorted(shown.keys() - folded):
        interval = f" [{shown[key + 'CiLow']:g}, {shown[key + 'CiHigh']:g}]" if key in with_ci else ""
        entries.append(f"{key}={shown[key]:g}{interval}")
    return entries


def _metric_lines(metrics: dict[str, float], width: int) -> list[str]:
    """The entries packed into lines of at most `width` (an entry longer than that gets its own line)."""
    lines: list[str] = []
    indent = "    "
    for entry in _metric_entries(metrics):
        if lines and len(lines[-1]) + 2 + len(entry) <= width:
            lines[-1] += "  " + entry
        else:
            lines.append(indent + entry)
    return ["  metrics:", *lines] if lines else []


def _details(res: Resource, row: tuple[str, str, str, str], with_summary: bool, width: int) -> list[str]:
    value, _, message = _summary(res)
    lines = [res.display]
    if with_summary:
        lines.append(f"  {row[2]}  {row[3]}")
    if value == "False" and message:
        lines.append(f"  error: {' '.join(message.split())}")
    stages = getattr(res.status, "stages", None) or []
    if stages:
        marks = (f"{s.name} {'✓' if s.completion_time else '…'}" for s in stages)
        lines.append("  stages: " + "  ".join(marks))
    outputs = getattr(res.status, "outputs", None)
    if outputs is not None:
        lines += [f"  {k}: {v}" for k, v in outputs.to_wire().items()]
    lines += _metric_lines(getattr(res.status, "metrics", None) or {}, width)
    return lines


def print_resources(console: Console, resources: list[Resource]) -> None:
    rows = [_row(res) for res in resources]
    table = _table(rows, console.width)
    if table is not None:
        console.print(table)
    for res, row in zip(resources, rows, strict=True):
        lines = _details(res, row, with_summary=table is None, width=console.width)
        if len(lines) > 1 or table is None:
            # soft_wrap: no line breaks of ours inside a URI or message; the terminal wraps long lines.
            console.print(Text("\n".join(lines)), soft_wrap=True)


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
    damaged: list[str] = []
    resources = all_stored(uri, damaged)
    if as_json:
        print(json.dumps([r.to_manifest() for r in resources], indent=2))
    elif resources:
        print_resources(Console(), resources)
    for message in damaged:  # the others are still shown; the exit status says something is wrong
        print(f"error: {message}", file=sys.stderr)
    if not resources and not damaged:
        print(f"error: no resources in store {store} ({uri}); run `cai run ... --store {store}` first",
              file=sys.stderr)
        return 1
    return 1 if damaged else 0
