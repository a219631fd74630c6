"""The streamed GGUF converter and the Qwen built-ins, on real models.

The converter is checked against transformers' own GGUF loader on SmolLM2's GGUF (a llama GGUF, so
the q/k un-permutation is exercised) with shards small enough that the index path is taken. The
prepared 0.5B Qwen (made by `make models`) is checked for its provenance, licence and a correct answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _logits(model_dir: Path, gguf: str | None = None) -> object:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **kw)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw).eval()
    ids = tokenizer("The constitution says the assistant should", return_tensors="pt")
    with torch.inference_mode():
        return model(**ids).logits


def test_streamed_conversion_equals_transformers_gguf_loader(tmp_path: Path) -> None:
    from cai.models.builtin import smollm2_gguf
    from cai.models.gguf_convert import convert

    gguf = smollm2_gguf()
    convert(gguf, tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct", shard_bytes=64 << 20)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2, "small shard_bytes should have split the checkpoint"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    ours, reference = _logits(tmp_path), _logits(gguf.parent, gguf.name)
    assert (ours - reference).abs().max().item() < 1e-5  # type: ignore[operator]


@pytest.mark.slow
def test_prepared_qwen_05b_is_the_pinned_model_with_its_licence() -> None:
    from cai.models.qwen import QWEN_BUILTINS, verify
    from cai.models.resolve import resolve_model

    name = "qwen2.5-coder-0.5b-instruct"
    path = resolve_model(f"builtin:{name}")
    marker = json.loads((path / "cai-prepared.json").read_text())
    assert marker["gguf_sha256"] == QWEN_BUILTINS[name].parts.sha256
    assert "Apache License" in (path / "LICENSE").read_text()
    notice = (path / "NOTICE").read_text()
    assert "Alibaba Cloud" in notice and "Qwen/Qwen2.5-Coder-0.5B-Instruct" in notice
    assert "license: apache-2.0" in (path / "README.md").read_text()
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["dtype"] == "float32"
    assert config["_model_name_or_path"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert "Paris" in verify(path, name)
