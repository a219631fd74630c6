"""Prompt sources: builtin sets, local/file:// /s3:// JSONL, CSV or Parquet files, and hf: datasets.

Every loader yields `{"id", "prompt", ...}` dicts. `check_source` is the cheap pre-flight used by
`cai validate`/`cai run` before any model is loaded; `load_prompts` reads for real.
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

BUILTIN = {"red-team": "red_team.jsonl", "helpful": "helpful.jsonl"}
FORMATS = (".jsonl", ".json", ".csv", ".parquet")
PROMPT_COLUMNS = ("prompt", "question", "instruction", "text")


class PromptSourceError(ValueError):
    """A prompt source cannot be used; the message names the source and what was expected."""


def _builtin_rows(name: str) -> list[dict[str, Any]]:
    if name not in BUILTIN:
        raise PromptSourceError(f"unknown builtin prompt set 'builtin:{name}' (expected one of: "
                                + ", ".join(f"builtin:{n}" for n in BUILTIN) + ")")
    text = resources.files("cai.data").joinpath("prompts", BUILTIN[name]).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _suffix(source: str) -> str:
    path = source.split("://", 1)[-1]
    for fmt in FORMATS:
        if path.endswith(fmt):
            return fmt
    return PurePosixPath(path).suffix


def _read_bytes(source: str) -> bytes:
    from ..store.fs import filesystem

    fs, path = filesystem(source)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PromptSourceError(f"prompt source {source!r}: file not found") from None
    except (OSError, PermissionError) as e:
        raise PromptSourceError(f"prompt source {source!r}: cannot read ({e})") from None


def _jsonl_rows(source: str, text: str) -> tuple[list[Any], list[int]]:
    """Rows of a JSONL file and the line each came from (blank lines skipped, still counted)."""
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise PromptSourceError(
                f"prompt source {source!r}: line {n}: expected valid JSON ({detail})") from None
        lines.append(n)
    return rows, lines


def _parse_file(source: str, data: bytes) -> tuple[list[Any], list[int] | None]:
    """The file's rows, with their line numbers for JSONL (where errors point at lines, not rows)."""
    fmt = _suffix(source)
    try:
        if fmt in (".jsonl", ".json"):
            text = data.decode("utf-8")
            stripped = text.lstrip()
            if fmt == ".json" and stripped.startswith("["):
                return list(json.loads(text)), None
            return _jsonl_rows(source, text)
        if fmt == ".csv":
            return list(csv.DictReader(io.StringIO(data.decode("utf-8")))), None
        if fmt == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(io.BytesIO(data)).to_pylist(), None
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, PromptSourceError):
            raise
        raise PromptSourceError(f"prompt source {source!r}: expected valid {fmt[1:].upper()} ({e})") from None
    raise PromptSourceError(f"prompt source {source!r}: expected a .jsonl, .json, .csv or .parquet file")


def _normalize(source: str, rows: list[Any], lines: list[int] | None = None) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        where = f"line {lines[i]}" if lines is not None else f"row {i + 1}"
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict):
            raise PromptSourceError(f"prompt source {source!r}: {where} is not an object")
        column = next((c for c in PROMPT_COLUMNS if isinstance(row.get(c), str)), None)
        if column is None:
            raise PromptSourceError(
                f"prompt source {source!r}: {where} has no prompt column "
                f"(expected one of {', '.join(PROMPT_COLUMNS)}; "
                f"found {', '.join(map(str, row)) or 'nothing'})"
            )
        prompt = row[column].strip()
        if not prompt:
            continue
        out.append({**row, "id": str(row.get("id") or f"{i + 1:06d}"), "prompt": prompt})
    return out


def load_prompts(source: str, limit: int | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Prompts of `source` (split default train for builtin/hf), first `limit` of them."""
    if source.startswith("builtin:"):
        rows = [
            r
            for r in _builtin_rows(source[len("builtin:") :])
            if r.get("split", "train") == (split or "train")
        ]
    elif source.startswith("hf:"):
        rows = _load_hf(source, split)
    else:
        rows, lines = _parse_file(source, _read_bytes(source))
        if split is not None:
            keep = [i for i, r in enumerate(rows)
                    if not isinstance(r, dict) or r.get("split", split) == split]
            rows = [rows[i] for i in keep]
            lines = [lines[i] for i in keep] if lines is not None else None
        return _limited(source, split, _normalize(source, rows, lines), limit)
    return _limited(source, split, _normalize(source, rows), limit)


def _limited(source: str, split: str | None, prompts: list[dict[str, Any]], limit: int | None
             ) -> list[dict[str, Any]]:
    """The first `limit` prompts; PromptSourceError when there are none."""
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise PromptSourceError(
            f"prompt source {source!r}{f' (split {split})' if split else ''}: no prompts found"
        )
    return prompts


def _load_hf(source: str, split: str | None) -> list[dict[str, Any]]:
    name, _, config = source[len("hf:"):].partition(":")
    try:
        import datasets
    except ImportError:
        raise PromptSourceError(
            f"prompt source {source!r}: needs the 'datasets' package (pip install 'cai-operator[train]')"
        ) from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:  # noqa: BLE001 — datasets raises many types (connection, missing config, ...)
        raise PromptSourceError(
            f"prompt source {source!r}: cannot load dataset ({type(e).__name__}: {str(e)[:300]})"
        ) from None
    return list(ds)


def check_source(source: str) -> str | None:
    """A one-line problem with `source`, or None. Cheap: no dataset is loaded except local files' headers."""
    if source.startswith("builtin:"):
        name = source[len("builtin:"):]
        return (
            None
            if name in BUILTIN
            else f"unknown builtin prompt set (expected one of: {', '.join('builtin:' + n for n in BUILTIN)})"
        )
    if source.startswith("hf:"):
        return None if len(source) > 3 else "expected hf:<dataset>[:<config>]"
    if _suffix(source) not in FORMATS:
        return (
            "expected builtin:red-team, builtin:helpful, hf:<dataset>, or a .jsonl/.json/.csv/.parquet file"
        )
    from ..store.fs import filesystem

    try:
        fs, path = filesystem(source)
        if not fs.exists(path):
            return f"file not found: {source}"
        if fs.size(path) == 0:
            return f"file is empty: {source}"
    except Exception as e:  # noqa: BLE001 — credentials/endpoint problems surface here
        return f"cannot access {source}: {type(e).__name__}: {e}"
    return None
