"""JSON Lines files (one object a line): the datasets stages write, and the chunk checkpoints that let
an interrupted stage resume at its first unfinished chunk.

Files are written atomically (a temporary sibling renamed into place), so a chunk file either is
complete or does not exist. A data-parallel worker (`Shard`) computes only its own chunks: chunk i
belongs to worker i mod N, and each chunk's samples are seeded by its index, so the chunks of N workers
are the chunks one worker would write.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Shard:
    """Worker `index` of `count` data-parallel workers of one stage."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"worker index {self.index} is not in 0..{self.count - 1}")

    def owns(self, chunk_index: int) -> bool:
        return chunk_index % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def checkpointed(items: Sequence[T], size: int, directory: Path, name: str,
                 compute: Callable[[list[T], int], list[Row]],
                 skipped: Callable[[list[T]], None] = lambda chunk: None,
                 saved: Callable[[Path], None] = lambda path: None,
                 shard: Shard | None = None) -> list[Row]:
    """`compute(chunk, index)` over `items` in chunks of `size`, in order, each chunk's rows saved as
    `directory/<name>-<index>.jsonl` and passed to `saved` (to keep it beyond this process). A chunk
    saved by an earlier attempt is read back instead of computed, and passed to `skipped` (to advance a
    progress bar). All rows, in order; with a `shard`, only the rows of the chunks it owns (the others
    are neither computed nor read)."""
    rows: list[Row] = []
    for index, start in enumerate(range(0, len(items), size)):
        if shard is not None and not shard.owns(index):
            continue
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
