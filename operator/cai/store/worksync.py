"""Work that outlives a pod: a stage's checkpoints mirrored to object storage, restored by the next pod.

Where it sits: stages/runtime.py gives every stage a local work directory. When the stage's output is
remote (s3://), what the stage marks as kept (`StageContext.keep`: chunk files, trainer checkpoints) is
also uploaded under `<output>.work/`, and the next pod of the stage (a Job retry, a preempted pod, a
suspended run resumed) downloads it before the stage runs, so the stage continues where it stopped
instead of starting from zero. The copy is removed once the stage has published its artifact.

Layout under `<output>.work/`: `files/<path>` for single files (one object each, so a file is either
there whole or absent) and `dirs/<path>/...` for directories, which count only once every rank has
written its marker `dirs/<path>/.kept-<rank>` after its last file: a half-uploaded checkpoint is never
restored. In a multi-node stage each rank uploads what it saved itself (its ZeRO shards) and every
rank's pod restores the union.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .fs import filesystem, local_path, normalize

WORK_SUFFIX = ".work"
MARKER = ".kept-"


def work_uri(output_uri: str) -> str:
    """Where the work of the stage writing `output_uri` is kept: a sibling of its artifact directory."""
    return normalize(output_uri) + WORK_SUFFIX


def _inside(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(parts) and not PurePosixPath(rel).is_absolute() and ".." not in parts


@dataclass
class WorkSync:
    """The kept work of one stage: `keep` uploads, `restore` downloads, `clear` removes it."""

    uri: str  # <output>.work
    local: Path  # the stage's work directory
    rank: int = 0
    world_size: int = 1

    @classmethod
    def for_output(cls, output_uri: str, work_dir: Path, rank: int = 0,
                   world_size: int = 1) -> WorkSync | None:
        """A sync for a remote output; None for a local one (its work directory outlives the process)."""
        if local_path(output_uri) is not None:
            return None
        return cls(work_uri(output_uri), work_dir, rank, world_size)

    def _relative(self, path: Path) -> str:
        resolved, root = path.resolve(), self.local.resolve()
        if not resolved.is_relative_to(root) or resolved == root:
            raise ValueError(f"{path} is not inside the work directory {self.local}")
        return resolved.relative_to(root).as_posix()

    def keep(self, path: Path) -> None:
        """Upload `path` (a file, or a directory with everything under it) under this work's URI."""
        fs, root = filesystem(self.uri)
        rel = self._relative(path)
        local = local_path(self.uri) is not None  # object stores have no directories to create

        def put(src: Path, dest: str) -> None:
            if local:
                fs.makedirs(dest.rpartition("/")[0], exist_ok=True)
            fs.put_file(str(src), dest)

        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                put(f, f"{root}/dirs/{rel}/{f.relative_to(path).as_posix()}")
            fs.pipe_file(f"{root}/dirs/{rel}/{MARKER}{self.rank}", b"")  # last: the directory is complete
        else:
            put(path, f"{root}/files/{rel}")

    def prune(self, parent: Path) -> list[str]:
        """Remove kept directories directly under `parent` that no longer exist locally (a trainer rotated
        them out); rank 0 alone prunes. The removed relative paths."""
        if self.rank != 0:
            return []
        fs, root = filesystem(self.uri)
        rel_parent = self._relative(parent)
        try:
            entries = fs.ls(f"{root}/dirs/{rel_parent}", detail=False)
        except FileNotFoundError:
            return []
        removed = []
        for entry in entries:
            name = PurePosixPath(entry).name
            if not (parent / name).exists():
                fs.rm(entry, recursive=True)
                removed.append(f"{rel_parent}/{name}")
        return removed

    def restore(self) -> list[str]:
        """Download the kept work this work directory lacks: every kept file, and every directory whose
        markers are all there. The relative paths of what was restored (directories once each)."""
        fs, root = filesystem(self.uri)
        if not fs.exists(root):
            return []
        found = [p[len(root) + 1:] for p in fs.find(root)]
        markers: dict[str, set[str]] = {}
        for rel in found:
            head, _, name = rel.rpartition("/")
            if head.startswith("dirs/") and name.startswith(MARKER):
                markers.setdefault(head.removeprefix("dirs/"), set()).add(name.removeprefix(MARKER))
        complete = {d for d, ranks in markers.items() if len(ranks) >= self.world_size}
        restored: list[str] = []
        for rel in found:
            area, _, sub = rel.partition("/")
            if not _inside(sub) or PurePosixPath(sub).name.startswith(MARKER):
                continue
            if area == "dirs":
                owner = next((d for d in complete if sub.startswith(d + "/")), None)
                if owner is None:
                    continue  # an incomplete directory (its upload was cut short): ignored
                label = owner
            elif area == "files":
                label = sub
            else:
                continue
            target = self.local / sub
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.part-{os.getpid()}")  # engines of one pod restore at once
            fs.get_file(f"{root}/{rel}", str(tmp))
            tmp.replace(target)
            if label not in restored:
                restored.append(label)
        return restored

    def clear(self) -> None:
        fs, root = filesystem(self.uri)
        if fs.exists(root):
            fs.rm(root, recursive=True)
