"""Code and docs point into docs/design.md, the project's own architecture text: every such link must
name a heading that exists, and no reference to the old, unpublished design card ("DESIGN", then a
section sign and a number) is left."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
SKIP = {".git", ".venv", "build", "dist", ".cache", ".mypy_cache", ".ruff_cache", ".import_linter_cache",
        ".pytest_cache", "__pycache__", "demo-out", "artifacts"}
SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".cfg", ".sh", ".Dockerfile", ".mk", ".tpl", ".json"}
LINK = re.compile(r"design\.md#([a-z0-9-]+)")


def _files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP or part.endswith(".egg-info") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in SUFFIXES or path.name in ("Makefile", "Dockerfile") or path.name.endswith(".Dockerfile"):
            out.append(path)
    return out


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_into_design_md_name_existing_headings():
    anchors = _anchors((ROOT / "docs" / "design.md").read_text())
    broken = [f"{p.relative_to(ROOT)}: #{a}" for p in _files() for a in LINK.findall(p.read_text(errors="replace"))
              if a not in anchors]
    assert not broken, broken


def test_no_reference_to_the_unpublished_design_card():
    marker = "DESIGN " + "§"  # split so this file does not match itself
    stale = [str(p.relative_to(ROOT)) for p in _files() if marker in p.read_text(errors="replace")]
    assert not stale, stale
