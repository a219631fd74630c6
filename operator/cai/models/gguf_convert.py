"""GGUF -> float32 safetensors, one tensor at a time (used by built-in model preparation).

Sits under `cai.models.resolve`. transformers can load a GGUF, but it dequantizes the whole model
into memory first (and `save_pretrained` then needs a second copy): converting a 1.5B model that way
peaked at 14 GB. Here the GGUF stays memory-mapped, each tensor is dequantized, renamed and
un-permuted with transformers' own GGUF tables (no copy of its name map), and written into shards of
at most `shard_bytes`, so the peak is about one shard plus the largest tensor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHARD_BYTES = 1 << 30


def load_config(gguf: Path, upstream: str) -> Any:
    """The transformers config the GGUF describes, named after its upstream repository."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = upstream
    if hasattr(config, "_model_name_or_path"):  # else the GGUF's general.name is saved as the model name
        config._model_name_or_path = upstream
    config.dtype = "float32"
    return config


def convert(gguf: Path, dest: Path, upstream: str, shard_bytes: int = SHARD_BYTES) -> Any:
    """Write config, generation config, tokenizer and float32 safetensors shards for `gguf` into `dest`.

    Every parameter of the model the config describes must come out of the GGUF exactly once (a tied
    output head may be absent); anything else is an error. Returns the config.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    config = load_config(gguf, upstream)
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = set(skeleton.state_dict())
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()

    reader = GGUFReader(gguf)
    arch = str(reader.fields["general.architecture"].contents())
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(skeleton, processor)

    shards: list[dict[str, Any]] = [{}]
    shard_size = 0
    written: dict[str, int] = {}  # hf name -> shard index
    files: list[str] = []

    def flush() -> None:
        nonlocal shard_size
        if shards[-1]:
            files.append(f"shard-{len(files):05d}.safetensors")
            save_file(shards[-1], str(dest / files[-1]), metadata={"format": "pt"})
            shards[-1] = {}
            shard_size = 0

    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        result = processor.process(
            weights=weights, name=tensor.name, tensor_key_mapping=names, parsed_parameters=parsed
        )
        hf_name = names.get(result.name)
        if hf_name is None or hf_name not in expected:
            raise ValueError(
                f"{gguf.name}: tensor {tensor.name!r} has no place in a {config.model_type} model"
            )
        if hf_name in written:
            raise ValueError(f"{gguf.name}: two tensors map to {hf_name!r}")
        array = np.ascontiguousarray(result.weights, dtype=np.float32)
        if not array.flags.writeable:  # an F32 tensor is a view of the read-only memory map: copy it
            array = array.copy()
        value = torch.from_numpy(array)
        if tuple(value.shape) != tuple(skeleton.state_dict()[hf_name].shape):
            raise ValueError(
                f"{gguf.name}: {tensor.name!r} has shape {tuple(value.shape)}, "
                f"{hf_name} needs {tuple(skeleton.state_dict()[hf_name].shape)}"
            )
        if shard_size and shard_size + value.nbytes > shard_bytes:
            flush()
        shards[-1][hf_name] = value
        shard_size += value.nbytes
        written[hf_name] = len(files)
        del weights, result
    flush()
    missing = expected - set(written) - tied
    if missing:
        raise ValueError(f"{gguf.name}: no tensor for {sorted(missing)[:5]} ({len(missing)} missing)")

    _name_shards(dest, files, written)
    config.save_pretrained(dest)
    GenerationConfig.from_model_config(config).save_pretrained(dest)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF tokenizer reports an unbounded max length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(dest)
    return config


def _name_shards(dest: Path, files: list[str], written: dict[str, int]) -> None:
    """Give the shards transformers' names and write the index it reads for sharded checkpoints."""
    if len(files) == 1:
        (dest / files[0]).rename(dest / "model.safetensors")
        return
    final = [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))]
    for old, new in zip(files, final, strict=True):
        (dest / old).rename(dest / new)
    total = sum((dest / f).stat().st_size for f in final)
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: final[i] for k, i in sorted(written.items())},
    }
    (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
