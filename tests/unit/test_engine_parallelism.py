"""How a vLLM engine spans the GPUs of its pod (models/backends/parallelism.py, pure): tensor-parallel
over the largest GPU count dividing the heads, and the log line says when data-parallel workers would do
better. The vLLM call itself is GPU-only (README, "GPU paths")."""

from __future__ import annotations

from cai.models.backends.parallelism import GIB, plan_engine, weight_bytes

LLAMA_8B = {"num_attention_heads": 32, "num_key_value_heads": 8}
QWEN_05B = {"num_attention_heads": 14, "num_key_value_heads": 2}


def test_one_gpu_is_one_engine_without_tensor_parallelism():
    assert plan_engine(LLAMA_8B, 16 * GIB, 1, 80 * GIB).tensor_parallel_size == 1
    assert plan_engine(LLAMA_8B, 16 * GIB, 0, 0).tensor_parallel_size == 1


def test_a_model_too_big_for_one_gpu_is_split_over_every_gpu():
    plan = plan_engine(LLAMA_8B, 140 * GIB, 8, 80 * GIB)
    assert plan.tensor_parallel_size == 8
    assert "need more than one" in plan.reason and "idle" not in plan.reason


def test_a_model_that_fits_one_gpu_says_data_parallel_workers_would_be_faster():
    plan = plan_engine(LLAMA_8B, 16 * GIB, 4, 80 * GIB)
    assert plan.tensor_parallel_size == 4
    assert "resources.workers: 4, gpusPerNode: 1" in plan.reason


def test_the_size_divides_the_attention_and_key_value_heads():
    # 14 attention heads, 2 KV heads: of 8 GPUs, 2 is the largest size both divide.
    plan = plan_engine(QWEN_05B, 1 * GIB, 8, 80 * GIB)
    assert plan.tensor_parallel_size == 2 and "6 GPU(s) of the pod stay idle" in plan.reason
    odd = plan_engine({"num_attention_heads": 7, "num_key_value_heads": 7}, GIB, 2, 80 * GIB)
    assert odd.tensor_parallel_size == 1 and "resources.workers" in odd.reason
    # Multimodal configs keep the language model's numbers under text_config.
    nested = plan_engine({"text_config": LLAMA_8B}, 140 * GIB, 4, 80 * GIB)
    assert nested.tensor_parallel_size == 4


def test_weight_bytes_counts_safetensors_else_bins(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "b.safetensors").write_bytes(b"x" * 5)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 100)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 15
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    assert weight_bytes(tmp_path) == 100
