"""Helpers shared by the RL stage tests (tests/stages/test_rl_*.py): stage contexts built the way
`cai stage` builds them, committed input artifacts, and small real models with unusual tokenizers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cai.pipeline.stagespec import StageSpec
from cai.stages.runtime import StageContext
from cai.store import commit_artifact

ROOT = Path(__file__).parents[2]
CONSTITUTION_FILE = ROOT / "constitutions" / "harmless.yaml"
TINY = "builtin:tiny-random"
EMBEDDED = "builtin:smollm2-135m-instruct"


def harmless_constitution() -> dict[str, Any]:
    return yaml.safe_load(CONSTITUTION_FILE.read_text())["spec"]


def make_ctx(tmp: Path, stage: str, kind: str, spec: dict[str, Any], models: dict[str, str],
             inputs: dict[str, str] | None = None, constitution: dict[str, Any] | None = None) -> StageContext:
    out = tmp / f"out-{stage}"
    work = tmp / f"work-{stage}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    base = {"constitutionRef": {"name": "harmless"}, "policy": {"model": TINY}} if kind == "PreferenceModel" else {
        "policy": {"model": TINY}, "rewardModelRef": {"name": "pm"}}
    stage_spec = StageSpec(stage=stage, kind=kind, name="t", spec={**base, **spec}, models=models, inputs=inputs or {},
                           constitution=constitution, output=out.as_uri())
    return StageContext.of(stage_spec, out, work)


def artifact(directory: Path, files: dict[str, str | bytes] | None = None, kind: str = "dataset") -> str:
    """Publish `directory` (plus `files`) as a committed artifact; returns its file:// URI."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        path = directory / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    uri = directory.as_uri()
    commit_artifact(directory, uri, kind=kind, producer={"kind": "Test", "name": "t", "stage": "test"},
                    inputs=[], inputs_digest="test")
    return uri


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def odd_tokenizer_model(directory: Path) -> Path:
    """A real (tiny, random) causal LM whose tokenizer splits the option letters: a normalizer
    rewrites "A" to "a a" and "B" to "b b", so "A" and " A" are two tokens each. Its vocabulary also
    differs from SmolLM2's, which makes it a tokenizer-mismatch case for the preference model."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<|im_start|>", "<|im_end|>", "a", "b", "user", "assistant", "system", "the", "answer",
             "is", "which", "response", "help", "(", ")", ":", "?", ".", ","]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("A", "a a"), normalizers.Replace("B", "b b")])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    directory.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def reward_model_from(model_dir: Path, directory: Path, seed: int = 0) -> Path:
    """A sequence-classification head (one score) on `model_dir`, saved with its tokenizer: a stand-in
    preference model for policy-training tests (its training is tested separately)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model.config.pad_token_id = tok.pad_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
