"""The terminal view of `cai plan`: per resource a table of its stages, then one block per stage with its
Job and the formula of its estimate.

Like `cai status`: table cells are single words, so rich never breaks them (when the table does not fit
the width it is left out: the blocks carry its figures too); the blocks are wrapped here at spaces only,
so a Job name, a number or a formula term is never split over two lines.
"""

from __future__ import annotations

import textwrap

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .estimate import ResourcePlan, StagePlan

COLUMNS = ("STAGE", "PODS", "GPU/POD", "PROMPTS", "TOKENS", "STEPS")
_TABLE_OVERHEAD = 3 * len(COLUMNS) + 1  # rich's box: a border and one space of padding each side
HOW_COUNTED = {"builtin": "the built-in set", "file": "rows of the file", "limit": "its limit, not counted",
               "unknown": "no limit, not counted"}


def short(n: int | None) -> str:
    """A count in at most 7 characters: 12,345 / 667.1M / 1.2G."""
    if n is None:
        return "unknown"
    for size, unit in ((10**12, "T"), (10**9, "G"), (10**6, "M")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:,}"


def _cells(st: StagePlan) -> tuple[str, ...]:
    steps = "-" if st.optimizer_steps is None and st.training_rows is None else short(st.optimizer_steps)
    prompts = "-" if not st.sources and st.comparisons is None else short(st.prompts or st.comparisons)
    return (st.stage, str(st.pods), str(st.gpus_per_pod), prompts, short(st.generated_tokens), steps)


def _table(plan: ResourcePlan, width: int) -> Table | None:
    rows = [_cells(st) for st in plan.stages]
    widths = [max(len(cell) for cell in column) for column in zip(COLUMNS, *rows, strict=False)]
    if sum(widths) + _TABLE_OVERHEAD > width:
        return None
    table = Table()
    for col, w in zip(COLUMNS, widths, strict=True):
        table.add_column(col, no_wrap=True, min_width=w, justify="left" if col == "STAGE" else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _stage_block(st: StagePlan) -> list[str]:
    """The Job, the prompt sources and the estimate's formula: every figure of the table row too."""
    gpus = f"{st.gpus_per_pod} GPU{'s' if st.gpus_per_pod > 1 else ''}" if st.gpus_per_pod else "no GPU"
    pods = f"{st.pods} pod{'s' if st.pods > 1 else ''} × {gpus}"
    if st.workers > 1:
        job = (f"Indexed Job {st.job}, {pods}, data-parallel workers "
               f"(pod k: prompt chunks k, k+{st.workers}, …)")
    elif st.indexed:
        job = f"Indexed Job {st.job}, {pods}, headless Service {st.service}"
    else:
        job = f"Job {st.job}, {pods}"
    lines = [f"{st.stage}: {job}"]
    for s in st.sources:
        lines.append(f"prompts: {s.field} {s.source}: {short(s.prompts)} ({HOW_COUNTED[s.counted_from]})")
    if st.comparisons is not None:
        lines.append(f"comparisons: {st.comparisons:,}")
    lines.append(st.estimate)
    return lines


def _wrap(line: str, indent: str, width: int) -> str:
    return textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent + "    ",
                         break_long_words=False, break_on_hyphens=False)


def print_plan(console: Console, plans: list[ResourcePlan]) -> None:
    width = console.width
    for plan in plans:
        head = f"{plan.kind}/{plan.name} ({plan.file})"
        out = [_wrap(head, "", width)]
        out += [_wrap(f"assumes {ref} exists in namespace {plan.namespace} (not among the manifests)", "  ",
                      width) for ref in plan.assumes]
        if not plan.stages:
            out.append("  no Jobs")
        console.print(Text("\n".join(out)), soft_wrap=True)
        table = _table(plan, width) if plan.stages else None
        if table is not None:
            console.print(table)
        for st in plan.stages:
            block = _stage_block(st)
            text = "\n".join([_wrap(block[0], "  ", width), *(_wrap(x, "    ", width) for x in block[1:])])
            console.print(Text(text), soft_wrap=True)
        console.print()
    stages = [st for p in plans for st in p.stages]
    tokens = [st.generated_tokens for st in stages]
    total = f"{sum(t for t in tokens if t is not None):,} generated tokens"
    unknown = sum(t is None for t in tokens)
    total += f" (+ {unknown} stage(s) unknown)" if unknown else ""
    console.print(Text(_wrap(f"{len(plans)} object(s): {len(stages)} Jobs, {sum(s.pods for s in stages)} "
                             f"pods, ≈ {total}", "", width)), soft_wrap=True)
