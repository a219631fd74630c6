"""Hugging Face Hub models (`hf:org/name[@revision]`): snapshots downloaded into the model cache.

`HF_HUB_OFFLINE=1` resolves from the local cache only; errors say how to do without the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from cai.models.cache import ModelResolveError, cache_dir
from cai.models.refs import ModelRef, local_dir_problem

# Formats transformers never loads for a causal LM; skipping them saves gigabytes on big repos.
_HF_IGNORE = ["*.onnx", "*.onnx_data", "onnx/*", "*.gguf", "*.h5", "*.msgpack", "*.tflite", "*.ot",
              "original/*", "*.mlmodel", "coreml/*", "openvino/*"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hf(ref: ModelRef) -> Path:
    """A local snapshot of `hf:org/name[@revision]` in the cache (downloaded unless HF_HUB_OFFLINE)."""
    from huggingface_hub import snapshot_download

    # Read at call time (huggingface_hub reads it once at import).
    offline = _env_flag("HF_HUB_OFFLINE")
    try:
        snapshot = snapshot_download(
            ref.target,
            revision=ref.revision,
            cache_dir=cache_dir() / "hf",
            local_files_only=offline,
            ignore_patterns=_HF_IGNORE,
        )
    except Exception as exc:  # the hub client raises many types (HTTP, DNS, offline, gated, missing)
        where = f"hf:{ref.target}" + (f"@{ref.revision}" if ref.revision else "")
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local cache"
            if offline
            else "the Hugging Face Hub could not be reached or refused the request"
        )
        raise ModelResolveError(
            f"cannot download {where} ({hint}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); "
            "without hub access, copy the model directory here and pass its path, or upload it and use s3://"
        ) from exc
    path = Path(snapshot)
    problem = local_dir_problem(path)
    if problem:
        raise ModelResolveError(f"hf:{ref.target}: {problem}")
    return path
