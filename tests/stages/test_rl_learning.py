"""RL that learns: the trainer train-policy builds (same spec -> TRL mapping, same trainer) raises a
known, programmatic reward on the embedded SmolLM2 within a bounded number of steps, for RLOO and
GRPO. The reward is 1 when a completion starts with "I" (how refusals start: "I can't", "I'm sorry")
and 0 otherwise, so the test does not depend on a trained preference model; a wrong algorithm
mapping, a sign error in the advantages, a learning rate that never reaches the optimizer or a KL
term that swamps the reward would each leave the reward flat."""

from __future__ import annotations

import pytest

STEPS = 16


def starts_with_i(completions, **kwargs) -> list[float]:
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if t.lstrip().startswith("I") else 0.0 for t in texts]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rl_raises_a_known_reward(tmp_path, embedded_model_dir, algorithm):
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from cai.data.prompts import load_prompts
    from cai.models.reward import load_tokenizer
    from cai.stages import train_policy
    from cai.stages.training import common_args

    from .rl_support import EMBEDDED, make_ctx

    spec = {"prompts": {"source": "builtin:red-team", "limit": 16}, "algorithm": algorithm, "steps": STEPS,
            "generationsPerPrompt": 4, "batchSize": 2, "maxNewTokens": 6, "learningRate": 2e-5, "klCoef": 0.05,
            "seed": 4}
    s = make_ctx(tmp_path, "train-policy", "RLAIFRun", spec, models={"policy": EMBEDDED, "reward": EMBEDDED}).spec
    rewards: list[float] = []

    class Rewards(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    policy = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    trainer = train_policy.build_trainer(s, policy, starts_with_i, load_tokenizer(embedded_model_dir), None,
                                         load_prompts(s.prompts.source, s.prompts.limit, s.prompts.split),
                                         common_args(tmp_path / "checkpoints", s.seed, None), callbacks=[Rewards()])
    trainer.train()
    assert len(rewards) == STEPS
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last >= first + 0.3, f"{algorithm} did not raise the reward: first 4 steps {first:.2f}, last 4 {last:.2f}"
