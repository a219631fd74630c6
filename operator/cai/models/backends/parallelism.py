"""How one generation engine uses the GPUs of its pod (pure; the vLLM backend asks, on GPU only).

A pod of a generation stage gets `resources.gpusPerNode` GPUs. The vLLM engine spans them with tensor
parallelism (vLLM's `tensor_parallel_size`) over the largest count that divides the model's attention
and key/value heads. Tensor parallelism is what a model needs when its weights do not fit one GPU;
when they do, splitting every layer over several GPUs still helps but less than running independent
engines, which is what `resources.workers` with `gpusPerNode: 1` does (data-parallel worker pods), so
the log says so. GPU-only path: written and unit-tested here, never run on a GPU yet (README, "GPU paths").
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
    tensor_parallel_size: int
    reason: str  # one line for the log


def weight_bytes(model_dir: Path) -> int:
    """Bytes of the model's weight files (safetensors, else PyTorch bins)."""
    files = list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def plan_engine(config: dict[str, Any], weights: int, gpus: int, gpu_bytes: int) -> EnginePlan:
    """The tensor-parallel size for an engine on `gpus` GPUs of `gpu_bytes` each, and why."""
    if gpus <= 1:
        return EnginePlan(1, "one GPU")
    text = config.get("text_config") or config
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    size = next(d for d in range(gpus, 0, -1) if heads % d == 0 and kv_heads % d == 0)
    unused = f"; {gpus - size} GPU(s) of the pod stay idle ({heads} attention / {kv_heads} key-value heads)" \
        if size < gpus else ""
    size_gib = f"{weights / GIB:.1f} GiB"
    if size == 1:
        return EnginePlan(1, f"one GPU of {gpus}: no tensor-parallel size above 1 divides the model's "
                          f"{heads} attention / {kv_heads} key-value heads; use resources.workers with "
                          "gpusPerNode: 1 instead")
    if weights <= FITS_ONE_GPU * gpu_bytes:
        return EnginePlan(size, f"tensor-parallel over {size} GPUs{unused}; the weights ({size_gib}) fit one "
                          f"GPU, so {gpus} data-parallel workers (resources.workers: {gpus}, gpusPerNode: 1) "
                          "would generate faster")
    return EnginePlan(size, f"tensor-parallel over {size} GPUs (the weights, {size_gib}, need more than one)"
                      + unused)
