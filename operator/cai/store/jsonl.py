"""JSON Lines files (one object a line): the datasets stages write, and the chunk checkpoints that let
an interrupted stage resume at its first unfinished chunk.

Files are written atomically (a temporary sibling renamed into place), so a chunk file either is
complete or does not exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Row = dict[str, Any]


def parse_jsonl(text: str | None) -> list[Row]:
    return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def read_jsonl(path: Path) -> list[Row]:
    return parse_jsonl(path.read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp.replace(path)


def checkpointed(items: Sequence[T], size: int, directory: Path, name: str,
                 compute: Callable[[list[T], int], list[Row]],
                 skipped: Callable[[list[T]], None] = lambda chunk: None,
                 saved: Callable[[Path], None] = lambda path: None) -> list[Row]:
    """`compute(chunk, index)` over `items` in chunks of `size`, in order, each chunk's rows saved as
    `directory/<name>-<index>.jsonl` and passed to `saved` (to keep it beyond this process). A chunk
    saved by an earlier attempt is read back instead of computed, and passed to `skipped` (to advance a
    progress bar). All rows, in order."""
    rows: list[Row] = []
    for index, start in enumerate(range(0, len(items), size)):
        chunk = list(items[start:start + size])
        path = directory / f"{name}-{index:05d}.jsonl"
        if path.exists():
            rows += read_jsonl(path)
            skipped(chunk)
            continue
        done = compute(chunk, index)
        write_jsonl(path, done)
        saved(path)
        rows += done
    return rows
