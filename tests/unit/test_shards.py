"""Pure parts of data-parallel stages: which chunks a worker owns, how `checkpointed` skips the others,
and how the workers' figures combine into the stage's (store/jsonl.py, stages/runtime.py)."""

from __future__ import annotations

import pytest

from cai.stages.runtime import combine_worker_metrics
from cai.store import Shard, checkpointed, read_jsonl


def test_every_chunk_has_exactly_one_owner():
    for count in (1, 2, 3, 7):
        owners = [[w for w in range(count) if Shard(w, count).owns(chunk)] for chunk in range(50)]
        assert all(len(o) == 1 for o in owners)
        assert sorted({o[0] for o in owners}) == list(range(count))  # nobody idles while chunks >= workers
    with pytest.raises(ValueError, match="worker index 2 is not in 0..1"):
        Shard(2, 2)


def test_a_worker_computes_and_returns_only_its_chunks(tmp_path):
    items = list(range(10))  # chunks of 3: [0,1,2] [3,4,5] [6,7,8] [9]
    computed: list[int] = []

    def compute(chunk, index):
        computed.append(index)
        return [{"x": x, "chunk": index} for x in chunk]

    rows = checkpointed(items, 3, tmp_path, "c", compute, shard=Shard(1, 2))
    assert computed == [1, 3] and [r["x"] for r in rows] == [3, 4, 5, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c-00001.jsonl", "c-00003.jsonl"]
    # Without a shard (the merge), the chunks found are read back and only the missing ones computed.
    rows = checkpointed(items, 3, tmp_path, "c", compute)
    assert computed == [1, 3, 0, 2] and [r["x"] for r in rows] == items
    assert read_jsonl(tmp_path / "c-00003.jsonl") == [{"x": 9, "chunk": 3}]


def test_worker_figures_add_up_and_times_are_the_longest_workers():
    combined = combine_worker_metrics([
        {"tokensGenerated": 100, "tokensPerSecond": 10.0, "generationSeconds": 10.0},
        {"tokensGenerated": 50, "tokensPerSecond": 12.5, "generationSeconds": 4.0},
        {"tokensGenerated": 0, "tokensPerSecond": 0.0, "generationSeconds": 0.1, "note": "idle"},
    ])
    assert combined == {"workers": 3, "tokensGenerated": 150, "tokensPerSecond": 22.5, "generationSeconds": 10.0}
