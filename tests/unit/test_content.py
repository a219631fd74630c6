"""Checks on the shipped content: constitutions/ and the prompt sets in operator/cai/data/prompts/.

Pure Python (pyyaml only), so it runs in any environment, before the package is even installed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
CONSTITUTIONS = ROOT / "constitutions"
PROMPTS = ROOT / "operator" / "cai" / "data" / "prompts"

KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# Few-shot examples are prepended to every prompt of a 135M model on CPU: keep them short.
MAX_FEW_SHOT_WORDS = 130

# name -> (min critique/revision principles, min preference principles, min few-shot of each kind)
EXPECTED = {
    "harmless": (16, 16, 3),
    "helpful-honest": (6, 6, 2),
}


def _words(example: dict) -> int:
    return sum(len(str(v).split()) for k, v in example.items() if k != "answer")


def _load_constitution(name: str) -> dict:
    path = CONSTITUTIONS / f"{name}.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1, f"{path} should hold exactly one manifest"
    return docs[0]


@pytest.fixture(params=sorted(EXPECTED), ids=sorted(EXPECTED))
def constitution(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param, _load_constitution(request.param)


def test_constitution_header(constitution: tuple[str, dict]) -> None:
    name, doc = constitution
    assert doc["apiVersion"] == "cai.dev/v1alpha1"
    assert doc["kind"] == "Constitution"
    assert doc["metadata"]["name"] == name
    assert isinstance(doc["spec"]["description"], str) and doc["spec"]["description"].strip()


def test_constitution_counts(constitution: tuple[str, dict]) -> None:
    name, doc = constitution
    spec = doc["spec"]
    min_cr, min_pref, min_shots = EXPECTED[name]
    assert len(spec["critiqueRevisionPrinciples"]) >= min_cr
    assert len(spec["preferencePrinciples"]) >= min_pref
    assert len(spec["fewShot"]["critiqueRevision"]) >= min_shots
    assert len(spec["fewShot"]["preference"]) >= min_shots


def test_principles_well_formed_and_unique(constitution: tuple[str, dict]) -> None:
    _, doc = constitution
    spec = doc["spec"]
    for key, fields in (
        ("critiqueRevisionPrinciples", ("critique", "revision")),
        ("preferencePrinciples", ("question",)),
    ):
        items = spec[key]
        names = [p["name"] for p in items]
        dupes = [n for n, c in Counter(names).items() if c > 1]
        assert not dupes, f"{key}: duplicate names {dupes}"
        for p in items:
            assert set(p) == {"name", *fields}, f"{key}/{p.get('name')}: unexpected fields {sorted(p)}"
            assert KEBAB.match(p["name"]), f"{key}: name {p['name']!r} is not kebab-case"
            for field in fields:
                assert isinstance(p[field], str) and p[field].strip(), f"{key}/{p['name']}.{field} is empty"
        texts = [p[f].strip().lower() for p in items for f in fields]
        assert len(texts) == len(set(texts)), f"{key}: two principles share the same text"
    for p in spec["preferencePrinciples"]:
        assert p["question"].rstrip().endswith("?"), (
            f"{p['name']}: a preference principle should be a question"
        )


def test_critique_revision_few_shot(constitution: tuple[str, dict]) -> None:
    _, doc = constitution
    for ex in doc["spec"]["fewShot"]["critiqueRevision"]:
        assert set(ex) == {"prompt", "response", "critique", "revision"}
        assert all(isinstance(v, str) and v.strip() for v in ex.values())
        assert _words(ex) <= MAX_FEW_SHOT_WORDS, (
            f"few-shot too long ({_words(ex)} words): {ex['prompt'][:50]}"
        )


def test_preference_few_shot(constitution: tuple[str, dict]) -> None:
    _, doc = constitution
    examples = doc["spec"]["fewShot"]["preference"]
    for ex in examples:
        assert set(ex) == {"prompt", "responseA", "responseB", "answer", "reasoning"}
        assert ex["answer"] in ("A", "B"), f"answer must be A or B, got {ex['answer']!r}"
        assert isinstance(ex["reasoning"], str) and ex["reasoning"].strip(), (
            "preference few-shot needs reasoning"
        )
        # The reasoning is the chain-of-thought target: it should end by naming the chosen option.
        assert f"({ex['answer']})" in ex["reasoning"], f"reasoning should conclude with ({ex['answer']})"
        for key in ("prompt", "responseA", "responseB"):
            assert isinstance(ex[key], str) and ex[key].strip()
        assert _words(ex) <= MAX_FEW_SHOT_WORDS, (
            f"few-shot too long ({_words(ex)} words): {ex['prompt'][:50]}"
        )
    answers = Counter(ex["answer"] for ex in examples)
    assert abs(answers["A"] - answers["B"]) <= 1, f"unbalanced few-shot answers: {dict(answers)}"


# --- prompt sets ------------------------------------------------------------------------------

PROMPT_SETS = {"red_team.jsonl": "rt", "helpful.jsonl": "hp"}


def _rows(filename: str) -> list[dict]:
    lines = (PROMPTS / filename).read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), f"{filename}: blank line"
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("filename", sorted(PROMPT_SETS))
def test_prompt_set(filename: str) -> None:
    rows = _rows(filename)
    prefix = PROMPT_SETS[filename]
    assert len(rows) >= 200
    for row in rows:
        assert set(row) == {"id", "prompt", "category", "split"}, f"{filename}: fields {sorted(row)}"
        assert re.fullmatch(rf"{prefix}-\d{{4}}", row["id"]), f"{filename}: bad id {row['id']!r}"
        assert isinstance(row["prompt"], str) and row["prompt"].strip(), (
            f"{filename}: {row['id']} empty prompt"
        )
        assert row["prompt"] == row["prompt"].strip()
        assert KEBAB.match(row["category"]), f"{filename}: {row['id']} category {row['category']!r}"
        assert row["split"] in ("train", "test"), f"{filename}: {row['id']} split {row['split']!r}"

    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"{filename}: duplicate ids"
    normalized = [re.sub(r"\W+", " ", r["prompt"].lower()).strip() for r in rows]
    dupes = [p for p, c in Counter(normalized).items() if c > 1]
    assert not dupes, f"{filename}: duplicate prompts {dupes[:3]}"

    test_rows = [r for r in rows if r["split"] == "test"]
    assert len(test_rows) >= 30
    assert len(rows) - len(test_rows) >= 150
    # The held-out split should cover the set, not one corner of it.
    categories = {r["category"] for r in rows}
    assert len({r["category"] for r in test_rows}) >= 0.75 * len(categories)
