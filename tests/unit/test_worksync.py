"""Kept work (store/worksync.py) on a file:// URI: what a new pod restores, and what it must not."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.store import checkpointed
from cai.store.worksync import MARKER, WorkSync, work_uri


def _checkpoint(work: Path, step: int, rank: int = 0) -> Path:
    d = work / "checkpoints" / f"checkpoint-{step}"
    (d / "sub").mkdir(parents=True, exist_ok=True)
    (d / f"weights-rank{rank}.bin").write_bytes(bytes([step % 256]) * 100)
    (d / "sub" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return d


@pytest.fixture
def remote(tmp_path) -> str:
    return work_uri((tmp_path / "store" / "run" / "finetune").as_uri())


def test_a_new_pod_gets_back_kept_files_and_complete_directories(tmp_path, remote):
    pod1 = tmp_path / "pod1"
    sync = WorkSync(remote, pod1)
    (pod1 / "chunks").mkdir(parents=True)
    (pod1 / "chunks" / "red-00000.jsonl").write_text('{"a": 1}\n')
    sync.keep(pod1 / "chunks" / "red-00000.jsonl")
    sync.keep(_checkpoint(pod1, 50))
    (pod1 / "scratch.bin").write_text("not kept")

    pod2 = tmp_path / "pod2"
    restored = WorkSync(remote, pod2).restore()
    assert sorted(restored) == ["checkpoints/checkpoint-50", "chunks/red-00000.jsonl"]
    assert (pod2 / "chunks" / "red-00000.jsonl").read_text() == '{"a": 1}\n'
    assert (pod2 / "checkpoints" / "checkpoint-50" / "sub" / "trainer_state.json").read_text() == '{"global_step": 50}'
    assert not (pod2 / "scratch.bin").exists()
    assert not list(pod2.rglob(f"{MARKER}*")), "markers stay in storage"
    assert WorkSync(remote, pod2).restore() == [], "what is already here is not fetched again"


def test_a_checkpoint_cut_short_is_not_restored(tmp_path, remote):
    pod1 = tmp_path / "pod1"
    sync = WorkSync(remote, pod1)
    sync.keep(_checkpoint(pod1, 50))
    # checkpoint-100's files reached storage but the pod died before its marker: incomplete.
    half = Path(remote.removeprefix("file://")) / "dirs" / "checkpoints" / "checkpoint-100"
    half.mkdir(parents=True)
    (half / "weights-rank0.bin").write_bytes(b"half")
    pod2 = tmp_path / "pod2"
    assert WorkSync(remote, pod2).restore() == ["checkpoints/checkpoint-50"]
    assert not (pod2 / "checkpoints" / "checkpoint-100").exists()


def test_a_multi_rank_checkpoint_counts_once_every_rank_kept_its_part(tmp_path, remote):
    rank0, rank1 = WorkSync(remote, tmp_path / "r0", 0, 2), WorkSync(remote, tmp_path / "r1", 1, 2)
    rank0.keep(_checkpoint(tmp_path / "r0", 50, rank=0))
    assert WorkSync(remote, tmp_path / "new", 0, 2).restore() == [], "rank 1's part is missing"
    rank1.keep(_checkpoint(tmp_path / "r1", 50, rank=1))
    new = tmp_path / "new2"
    assert WorkSync(remote, new, 1, 2).restore() == ["checkpoints/checkpoint-50"]
    assert {p.name for p in (new / "checkpoints" / "checkpoint-50").glob("*.bin")} == {"weights-rank0.bin",
                                                                                      "weights-rank1.bin"}


def test_rotated_checkpoints_are_pruned_by_rank_0_and_clear_removes_everything(tmp_path, remote):
    pod = tmp_path / "pod"
    sync = WorkSync(remote, pod)
    for step in (50, 100, 150):
        sync.keep(_checkpoint(pod, step))
    import shutil

    shutil.rmtree(pod / "checkpoints" / "checkpoint-50")  # the trainer's save_total_limit
    assert WorkSync(remote, pod, 1, 1).prune(pod / "checkpoints") == [], "only rank 0 prunes"
    assert sync.prune(pod / "checkpoints") == ["checkpoints/checkpoint-50"]
    assert sorted(WorkSync(remote, tmp_path / "again").restore()) == ["checkpoints/checkpoint-100",
                                                                     "checkpoints/checkpoint-150"]
    sync.clear()
    assert not Path(remote.removeprefix("file://")).exists()
    assert WorkSync(remote, tmp_path / "empty").restore() == []


def test_only_paths_inside_the_work_directory_are_kept(tmp_path, remote):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    with pytest.raises(ValueError, match="not inside the work directory"):
        WorkSync(remote, tmp_path / "pod").keep(outside)


def test_local_outputs_need_no_copy(tmp_path):
    assert WorkSync.for_output((tmp_path / "out").as_uri(), tmp_path / "work") is None
    sync = WorkSync.for_output("s3://bucket/ns/run/finetune/", tmp_path / "work")
    assert sync is not None and sync.uri == "s3://bucket/ns/run/finetune.work"


def test_each_saved_chunk_is_handed_to_keep_and_a_kept_chunk_is_not_recomputed(tmp_path):
    kept: list[str] = []
    computed: list[int] = []

    def compute(chunk, index):
        computed.append(index)
        return [{"x": x} for x in chunk]

    rows = checkpointed(list(range(5)), 2, tmp_path, "c", compute, saved=lambda p: kept.append(p.name))
    assert rows == [{"x": x} for x in range(5)] and computed == [0, 1, 2]
    assert kept == ["c-00000.jsonl", "c-00001.jsonl", "c-00002.jsonl"]
    kept.clear()
    computed.clear()
    assert checkpointed(list(range(5)), 2, tmp_path, "c", compute, saved=lambda p: kept.append(p.name)) == rows
    assert computed == [] and kept == []
