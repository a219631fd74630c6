"""Reward (preference) models: a causal LM with a one-output score head, the tokenizer they share with
the policy, and how a (prompt, response) is rendered and scored.

Used by the stages that train a preference model (`train-preference-model`), train against one
(`train-policy`, through TRL) and score evaluation responses with one (`evaluate`). Texts are
rendered as TRL's online trainers render completions for a reward model (chat template of [user
prompt, assistant response], no extra special tokens), so the model sees the same text when it is
trained and when it is used. torch/transformers/trl are imported inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RewardModelError(ValueError):
    """A model cannot serve as a reward model (the message names it and says why)."""


def same_vocabulary(tok_a: Any, tok_b: Any) -> bool:
    return bool(tok_a.get_vocab() == tok_b.get_vocab())


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_reward_model(base_dir: Path, base_ref: str, dtype: Any) -> Any:
    """The base model with a one-output `score` head. Only the head may be missing from the checkpoint:
    a backbone weight that is missing too would be initialised at random and train without complaint
    (`RewardModelError`)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # transformers reports the fresh head as a table of MISSING weights at warning level; the check
    # below is the one that matters, so that table is kept out of the stage log.
    hf_logger = hf_logging.get_logger("transformers.modeling_utils")
    level = hf_logger.level
    hf_logger.setLevel(hf_logging.ERROR)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            base_dir, num_labels=1, dtype=dtype, output_loading_info=True)
    finally:
        hf_logger.setLevel(level)
    backbone = model.base_model_prefix + "."
    broken = sorted(k for k in info["missing_keys"] if k.startswith(backbone))
    if broken:
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        raise RewardModelError(
            f"preference model base {base_ref}: the checkpoint lacks {len(broken)} backbone "
            f"weight(s) ({shown}); expected a complete causal LM (only the score head may be new)"
        )
    return model


def vocabulary_problem(
    base_ref: str, base_tok: Any, policy_ref: str, policy_tok: Any, what: str
) -> str | None:
    """Why the reward model (`what` names its role) cannot score the policy's text, or None."""
    if not same_vocabulary(base_tok, policy_tok):
        return (
            f"the {what} {base_ref} has a different tokenizer than the policy {policy_ref} "
            f"(vocabulary sizes {len(base_tok)} and {len(policy_tok)}, or different tokens): the RL trainer "
            "re-tokenizes the policy's text for the preference model, so both must share one vocabulary. "
            "Set spec.training.baseModel to a model of the policy's family."
        )
    return None


def tokenize_rows(rows: list[dict[str, Any]], tokenizer: Any) -> list[dict[str, Any]]:
    """chosen_ids/rejected_ids = responseA/responseB as [user prompt, assistant response] chats,
    rendered exactly as TRL's online trainers render (prompt + completion) for reward models."""
    from trl.data_utils import apply_chat_template

    def ids(prompt: str, response: str) -> list[int]:
        text = apply_chat_template(
            {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]},
            tokenizer,
        )["text"]
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return [{"chosen_ids": ids(r["prompt"], r["responseA"]), "rejected_ids": ids(r["prompt"], r["responseB"]),
             "p": r["p"]} for r in rows]


def score_texts(
    model: Any, tokenizer: Any, conversations: list[tuple[str, str]], batch_size: int
) -> list[float]:
    """The reward model's score of each (prompt, response), rendered and padded as in training."""
    import torch

    seqs = [t["chosen_ids"] for t in tokenize_rows(
        [{"prompt": p, "responseA": r, "responseB": "", "p": 0.0} for p, r in conversations], tokenizer)]
    scores: list[float] = []
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i:i + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for k, s in enumerate(batch):
                ids[k, :len(s)] = torch.tensor(s)
                mask[k, :len(s)] = 1
            scores += (
                model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().tolist()
            )
    return scores


def load_scorer(path: Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained reward model directory, ready for `score_texts`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    return model, tok
