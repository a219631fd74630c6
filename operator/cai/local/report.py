"""`cai report NAME`: the evaluation summary of an RLAIFRun run locally (`cai run`), as a table.

Reads the run's stored status (`cai.local.state`), follows `status.outputs.report` to the
evaluate artifact and prints its `summary.json` (win rates with CIs, preference-model accuracy and
calibration, RL reward/KL) plus the path of report.html. No torch import.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from ..api.kinds import RLAIFRunStatus
from ..feedback.verdict import degenerate_note, verdict
from ..pipeline.conditions import get_condition
from ..store import filesystem, local_path
from ..store.fs import normalize
from . import state

PAIRS = {"rl_vs_sl": "RL-CAI vs SL-CAI", "rl_vs_start": "RL-CAI vs start", "sl_vs_start": "SL-CAI vs start"}
SETS = {"harmless": "harmless (red-team)", "helpful": "helpful"}


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def wrap_keeping_intervals(text: str, width: int) -> list[str]:
    """Lines of at most `width` broken between words, never inside a bracketed interval "[a, b]"."""
    lines: list[str] = []
    for token in re.findall(r"\[[^\]]*\][^\s]*|\S+", text):
        if lines and len(lines[-1]) + 1 + len(token) <= width:
            lines[-1] += " " + token
        else:
            lines.append(token)
    return lines


def load_summary(report_uri: str) -> dict[str, Any] | None:
    base = report_uri.rsplit("/", 1)[0] if report_uri.endswith(".html") else report_uri.rstrip("/")
    fs, path = filesystem(base + "/summary.json")
    try:
        with fs.open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _table(title: str, columns: tuple[str, ...], text_columns: int) -> Table:
    """A table whose first `text_columns` columns wrap between words when the terminal is narrow; figures
    and intervals are never wrapped (a CI split over two lines reads as two numbers)."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        text = i < text_columns
        table.add_column(col, justify="left" if text else "right", no_wrap=not text)
    return table


def summary_table(summary: dict[str, Any]) -> Group:
    """Win rates (soft, with bootstrap CI; hard, with Wilson CI), then PM and RL figures."""
    wins = _table(f"RL-CAI evaluation: {summary.get('name', '')}",
                  ("prompts", "comparison", "n", "win rate", "95% CI", "hard win rate"), 2)
    for s, pairs in (summary.get("winRates") or {}).items():
        for p, wr in pairs.items():
            wins.add_row(SETS.get(s, s), PAIRS.get(p, p), str(wr.get("n", "")), _f(wr.get("winRate")),
                         f"[{_f(wr.get('ciLow'))}, {_f(wr.get('ciHigh'))}]", _f(wr.get("hardWinRate")))
    pm, rl = summary.get("preferenceModel") or {}, summary.get("rl") or {}
    # The training figures have other columns (no CI): a table of their own keeps the first one narrow.
    training = _table("Preference model and RL", ("model", "figure", "n", "value"), 2)
    training.add_row("preference model", "held-out accuracy", str(pm.get("heldOut", "")),
                     _f(pm.get("heldOutAccuracy")))
    training.add_row("preference model", "calibration error (ECE)", "", _f(pm.get("calibrationError")))
    # status.metrics' rewardFirst/rewardMean: means of the first and last quarter of the RL steps.
    training.add_row("RL", f"mean reward ({rl.get('algorithm', '')}), first → last quarter",
                     str(rl.get("steps", "")), f"{_f(rl.get('rewardFirst'))} → {_f(rl.get('rewardMean'))}")
    training.add_row("RL", "KL to start (last quarter)", "", _f(rl.get("kl"), 4))
    return Group(wins, training)


def print_report(store: str, name: str, namespace: str = "default") -> int:
    store = normalize(store)
    try:
        res = state.stored_resource(store, "RLAIFRun", namespace, name)
    except state.DamagedStatusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if res is None:
        print(
            f"error: no RLAIFRun {namespace}/{name} in {store} (run it with `cai run` first)", file=sys.stderr
        )
        return 1
    status = res.status
    report = status.outputs.report if isinstance(status, RLAIFRunStatus) else None
    if not report:
        cond = get_condition(res.status, "Succeeded") if res.status is not None else None
        why = f" ({cond.reason}: {cond.message})" if cond is not None and cond.message else ""
        print(f"error: RLAIFRun {name} has no report yet{why}", file=sys.stderr)
        return 1
    summary = load_summary(report)
    if summary is None:
        print(f"error: {report}: summary.json not found next to the report", file=sys.stderr)
        return 1
    console = Console()
    # The answer first, in one sentence (computed from the summary: older reports get it too).
    for sentence in (verdict(summary), degenerate_note(summary)):
        if sentence:
            console.print("\n".join(wrap_keeping_intervals(sentence, console.width)), highlight=False,
                          soft_wrap=True)
    console.print(summary_table(summary))
    lp = local_path(report)
    console.print(f"report: {lp if lp is not None else report}", highlight=False, soft_wrap=True)
    return 0
