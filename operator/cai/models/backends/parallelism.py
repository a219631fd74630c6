"""How a pod's generation uses its GPUs (pure; the stage entry point and the vLLM backend ask, on GPU only).

A pod of a generation stage gets `resources.gpusPerNode` GPUs. When the model's weights fit one GPU, a
data-parallel stage (one that shards, `resources.workers`) runs one engine per GPU: the pod becomes that
many single-GPU workers (`cai.stages.engines`), the fastest use of GPUs for a model that fits one. When
they do not fit, or the stage cannot shard, one vLLM engine spans the GPUs with tensor parallelism
(`tensor_parallel_size`) over the largest count that divides the model's attention and key/value heads.
GPU-only path: written and unit-tested here, never run on a GPU yet (README, "GPU paths").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Weights up to this share of one GPU's memory leave room for a useful KV cache: the model "fits".
FITS_ONE_GPU = 0.6
GIB = 1 << 30


@dataclass(frozen=True)
class EnginePlan:
    engines: int  # independent engines, one per GPU (data-parallel workers inside the pod)
    tensor_parallel_size: int  # GPUs each engine spans
    reason: str  # one line for the log


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the model's weight files (safetensors, else PyTorch bins)."""
    files = list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def plan_engine(config: dict[str, Any], weights: int, gpus: int, gpu_bytes: int,
                can_shard: bool = False) -> EnginePlan:
    """How `gpus` GPUs of `gpu_bytes` each run a model with this config and these weights: as engines
    of one GPU each (only where the stage can shard its prompts) or as one tensor-parallel engine."""
    if gpus <= 1:
        return EnginePlan(1, 1, "one GPU")
    size_gib = f"{weights / GIB:.1f} GiB"
    fits = weights <= FITS_ONE_GPU * gpu_bytes
    if fits and can_shard:
        return EnginePlan(gpus, 1, f"{gpus} data-parallel engines, one per GPU: the weights ({size_gib}) "
                          "fit one GPU")
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    size = next(d for d in range(gpus, 0, -1) if heads % d == 0 and kv_heads % d == 0)
    unused = f"; {gpus - size} GPU(s) of the pod stay idle ({heads} attention / {kv_heads} key-value heads)" \
        if size < gpus else ""
    if size == 1:
        return EnginePlan(1, 1, f"one GPU of {gpus}: no tensor-parallel size above 1 divides the model's "
                          f"{heads} attention / {kv_heads} key-value heads")
    if fits:
        return EnginePlan(1, size, f"tensor-parallel over {size} GPUs{unused} (this stage runs one engine; "
                          f"the weights, {size_gib}, would fit one GPU)")
    return EnginePlan(1, size, f"tensor-parallel over {size} GPUs (the weights, {size_gib}, need more "
                      "than one)" + unused)
