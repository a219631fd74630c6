"""RL-CAI policy training through TRL on tiny-random: RLOO and GRPO both run a few steps against a
preference model (a real sequence-classification model), log reward/KL/samples per step, change the
policy's weights and save it; a preference model with another tokenizer is refused up front."""

from __future__ import annotations

import json
import math

import pytest

from cai.stages.runtime import StageError

from .rl_support import TINY, make_ctx, odd_tokenizer_model, read_jsonl, reward_model_from


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory, tiny_model_dir):
    return reward_model_from(tiny_model_dir, tmp_path_factory.mktemp("pm") / "model")


def policy_ctx(tmp_path, reward_dir, algorithm: str):
    spec = {"prompts": {"source": "builtin:red-team", "limit": 8}, "algorithm": algorithm, "steps": 3,
            "generationsPerPrompt": 2, "batchSize": 2, "maxNewTokens": 6, "learningRate": 1e-3, "klCoef": 0.1,
            "seed": 4}
    return make_ctx(tmp_path, "train-policy", "RLAIFRun", spec, models={"policy": TINY, "reward": str(reward_dir)})


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rl_runs_a_few_steps_logs_and_saves_the_policy(tmp_path, tiny_model_dir, tiny_reward_model, algorithm):
    import torch
    from safetensors.torch import load_file

    from cai.stages import train_policy

    ctx = policy_ctx(tmp_path, tiny_reward_model, algorithm)
    result = train_policy.run(ctx)
    log = read_jsonl(ctx.out_dir / "rl_log.jsonl")
    assert [e["step"] for e in log] == [1, 2, 3]
    for e in log:
        assert math.isfinite(e["reward"]) and "kl" in e and e["samples"]
        assert {"prompt", "completion", "reward"} <= set(e["samples"][0])
    assert result.metrics["algorithm"] == algorithm and result.metrics["steps"] == 3
    assert math.isfinite(result.metrics["rewardMean"]) and math.isfinite(result.metrics["kl"])
    names = {p.name for p in ctx.out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_log.json"} <= names
    assert json.loads((ctx.out_dir / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(ctx.out_dir / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the policy's weights changed"


def test_a_preference_model_with_another_tokenizer_is_refused(tmp_path):
    from cai.stages import train_policy

    odd_pm = reward_model_from(odd_tokenizer_model(tmp_path / "odd"), tmp_path / "odd-pm")
    with pytest.raises(StageError, match="different tokenizer than the policy"):
        train_policy.run(policy_ctx(tmp_path, odd_pm, "rloo"))
