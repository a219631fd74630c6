"""How a pod's generation uses its GPUs (models/backends/parallelism.py, pure): one engine per GPU when
the model fits one and the stage shards, else one engine tensor-parallel over the largest GPU count
dividing the heads. The GPU paths themselves are GPU-only (README, "GPU paths")."""

from __future__ import annotations

from cai.models.backends.parallelism import GIB, plan_engine, weight_bytes

LLAMA_8B = {"num_attention_heads": 32, "num_key_value_heads": 8}
QWEN_05B = {"num_attention_heads": 14, "num_key_value_heads": 2}


def test_one_gpu_is_one_engine_without_tensor_parallelism():
    assert plan_engine(LLAMA_8B, 16 * GIB, 1, 80 * GIB).tensor_parallel_size == 1
    assert plan_engine(LLAMA_8B, 16 * GIB, 0, 0).tensor_parallel_size == 1
    assert plan_engine(LLAMA_8B, 16 * GIB, 1, 80 * GIB, can_shard=True).engines == 1


def test_a_model_too_big_for_one_gpu_is_split_over_every_gpu():
    plan = plan_engine(LLAMA_8B, 140 * GIB, 8, 80 * GIB)
    assert plan.tensor_parallel_size == 8
    assert "need more than one" in plan.reason and "idle" not in plan.reason


def test_a_model_that_fits_one_gpu_runs_an_engine_per_gpu_where_the_stage_shards():
    plan = plan_engine(LLAMA_8B, 16 * GIB, 4, 80 * GIB, can_shard=True)
    assert (plan.engines, plan.tensor_parallel_size) == (4, 1)
    assert "4 data-parallel engines" in plan.reason and "16.0 GiB" in plan.reason
    # A stage that cannot shard its prompts (evaluate) spans the GPUs with one engine instead.
    single = plan_engine(LLAMA_8B, 16 * GIB, 4, 80 * GIB)
    assert (single.engines, single.tensor_parallel_size) == (1, 4) and "would fit one GPU" in single.reason
    # Too big for one GPU: tensor parallelism, sharding stage or not.
    big = plan_engine(LLAMA_8B, 140 * GIB, 8, 80 * GIB, can_shard=True)
    assert (big.engines, big.tensor_parallel_size) == (1, 8)


def test_the_size_divides_the_attention_and_key_value_heads():
    # 14 attention heads, 2 KV heads: of 8 GPUs, 2 is the largest size both divide.
    plan = plan_engine(QWEN_05B, 1 * GIB, 8, 80 * GIB)
    assert plan.tensor_parallel_size == 2 and "6 GPU(s) of the pod stay idle" in plan.reason
    odd = plan_engine({"num_attention_heads": 7, "num_key_value_heads": 7}, GIB, 2, 80 * GIB)
    assert odd.tensor_parallel_size == 1 and "no tensor-parallel size above 1" in odd.reason
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


def test_every_stage_that_shards_says_where_its_engine_model_comes_from():
    from cai.api.kinds import KINDS, STAGES
    from cai.stages.engines import ENGINE_OF

    assert set(ENGINE_OF) == {name for name, (_, info) in STAGES.items() if info.shards}
    for name, engine in ENGINE_OF.items():
        kind = STAGES[name][0]
        backend, role = engine(KINDS[kind.kind].spec.model_validate(_MINIMAL[kind.kind]))
        assert backend == "auto" and role in ("policy", "feedback"), name


_MINIMAL = {"CritiqueRun": {"constitutionRef": {"name": "c"}, "model": "builtin:tiny-random"},
            "PreferenceModel": {"constitutionRef": {"name": "c"}, "policy": {"model": "builtin:tiny-random"}}}
