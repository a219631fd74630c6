"""The transformers backend: batched generation and option scoring with plain PyTorch models.

The CPU default behind `cai.models.backends.load_backend` (kind `transformers`, or `auto` without
a GPU+vLLM). Imported lazily: torch and transformers load only when a backend is created.

Throughput comes from batching: prompts are sorted by token length so each batch pads little,
padded on the left (decoder-only models continue from the right edge), generated together, and
put back in input order. `score_next_token` is a single forward pass per prompt, also batched.
Prompts that share a long token prefix (few-shot examples, the labeller's question frame) run that
prefix once and reuse its key/value cache, in generation and in scoring alike, as vLLM's prefix
caching does on the other backends; the outputs are those of the plain path up to float rounding.
Sampling (temperature > 0) draws tokens with `nucleus.NucleusSampler`, the same distribution as
transformers' top-p without its full-vocabulary sort (2x the sampled tokens/s on the embedded model).

Precision: with `dtype="auto"` on a CPU with AMX tiles (Sapphire Rapids and later), generation runs
on a bfloat16 copy of the model, loaded on first use (bf16 matmuls run natively there, about 2.8x
fp32 on the embedded model at batch 32), while `score_next_token` keeps the float32 weights, so
labels stay exact. `dtype="float32"` or `CAI_CPU_BF16=0` keeps generation in float32 too. Scoring in the
bf16 generator's precision was measured and not adopted: |ΔpA| against float32 reached 0.023 on the
embedded model (0.008 on Qwen2.5-Coder-0.5B; goal 0.01). A model loaded in bf16/fp16 (the GPU default)
computes its options' logits in float32 from the last hidden state (`_option_logprobs`), which cut that
error from 0.062 to 0.023 (SmolLM2) and from 0.017 to 0.008 (Qwen 0.5B), max over 8 prompts.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from cai.models.backends.base import Completion, Conversation, ProgressFn, SamplingParams
from cai.models.backends.nucleus import NucleusSampler
from cai.models.backends.option_tokens import option_token_ids
from cai.models.resolve import resolve_model

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def _pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # bf16 matmuls on most CPUs are emulated and slower than fp32; fp32 also keeps scores exact.
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, " + ", ".join(sorted(_DTYPES))) from None


def _cpu_generates_in_bf16(dtype: str, device: torch.device) -> bool:
    """bf16 generation pays only where the CPU multiplies bf16 natively (AMX); elsewhere it is emulated."""
    if dtype != "auto" or device.type != "cpu" or os.environ.get("CAI_CPU_BF16", "1") == "0":
        return False
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


class _FinishTracker(StoppingCriteria):
    """Stops a row on an EOS token or a stop string, and records the step at which it finished.

    `generate` overwrites a finished row's later tokens with the pad token, which is often the EOS
    token itself, so the finishing step is the only exact way to count generated tokens. Stop
    strings are matched in the generated text only (as vLLM and OpenAI servers do), not across the
    prompt boundary as transformers' own StopStringCriteria would; only the last few tokens are
    decoded each step, enough to contain the longest stop string.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, batch: int, eos_ids: list[int], stop: Sequence[str],
                 device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.eos = torch.tensor(eos_ids, device=device)
        self.stop = [s for s in stop if s]
        # Every token decodes to at least one character except special ones (skipped anyway), so
        # this many tokens cover the longest stop string plus a partial token on either side.
        self.window = max((len(s) for s in self.stop), default=0) + 2
        self.finished_at = torch.full((batch,), -1, dtype=torch.long, device=device)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        done = torch.isin(input_ids[:, -1], self.eos)
        step = input_ids.shape[1] - self.prompt_len - 1
        if self.stop:
            start = max(self.prompt_len, input_ids.shape[1] - self.window)
            tails = self.tokenizer.batch_decode(input_ids[:, start:].tolist(), skip_special_tokens=True)
            hits = [any(s in tail for s in self.stop) for tail in tails]
            done = done | torch.tensor(hits, device=done.device)
        self.finished_at = torch.where(done & (self.finished_at < 0), step, self.finished_at)
        return done


class TransformersBackend:
    """`Backend` on a transformers `AutoModelForCausalLM` (see `base.Backend` for the contract)."""

    name = "transformers"

    def __init__(
        self, model: str, *, batch_size: int = 16, dtype: str = "auto", device: str | None = None
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.path = resolve_model(model)
        self.device = _pick_device(device)
        self.dtype = _pick_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.lm = AutoModelForCausalLM.from_pretrained(self.path, dtype=self.dtype).to(self.device).eval()
        self.pad_id: int = self.tokenizer.pad_token_id
        eos = self.lm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)
        self.max_positions: int | None = getattr(self.lm.config, "max_position_embeddings", None)
        self._option_ids: dict[str, int] = {}
        self._bf16_generation = _cpu_generates_in_bf16(dtype, self.device)
        # The options' logits in float32 from a low-precision model's hidden state need the plain
        # head: models that scale or cap their logits after it keep the usual path.
        config = self.lm.config
        self._fp32_option_head = not any(
            getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale")
        ) and isinstance(self.lm.get_output_embeddings(), torch.nn.Linear)
        self._generator: Any = None
        log.info("Loaded %s from %s on %s (%s%s)", model, self.path, self.device, self.dtype,
                 "; generation in bfloat16 on this AMX CPU" if self._bf16_generation else "")

    @property
    def generator(self) -> Any:
        """The model `generate` runs on: `lm` itself, or its bfloat16 copy (see the module docstring)."""
        if self._generator is None:
            # Loaded again rather than cast: a cast would also turn fp32 buffers (RoPE's inv_freq) into
            # bf16, which costs accuracy and, measured here, 40% of the speed-up.
            self._generator = (
                AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.bfloat16).to(self.device).eval()
                if self._bf16_generation else self.lm
            )
        return self._generator

    # ------------------------------------------------------------------ prompts

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        # Rendered prompts already carry the template's special tokens: adding BOS again would
        # change what the model sees relative to vLLM and the OpenAI-compatible servers.
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        if self.max_positions:
            for i, row in enumerate(ids):
                if len(row) >= self.max_positions:
                    raise ValueError(
                        f"prompt {i} has {len(row)} tokens; {self.model} accepts at most {self.max_positions}"
                    )
        return ids

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of similar length, longest first (memory peaks surface early)."""
        order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    # ------------------------------------------------------------------ generation

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams, n: int = 1,
             progress: ProgressFn | None = None) -> list[list[Completion]]:
        return self.complete([self.render_chat(c) for c in conversations], params, n=n, progress=progress)

    def complete(self, prompts: Sequence[str], params: SamplingParams, n: int = 1,
                 progress: ProgressFn | None = None) -> list[list[Completion]]:
        """`n` continuations per prompt, in input order.

        `progress` receives the number of prompts whose `n` completions all finished since the last
        call. Sampling is seeded: the same prompts, params and batch size give the same texts (the
        batch a prompt lands in depends on the other prompts' lengths, so changing the prompt set
        can change sampled, but never greedy, outputs).
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        encoded = self._encode(prompts)
        results: list[list[Completion | None]] = [[None] * n for _ in encoded]
        if not encoded:
            return []
        # Work items are (prompt, sample); the n samples of a prompt have equal length so they
        # share a batch and pad nothing.
        items = [(i, j) for i in range(len(encoded)) for j in range(n)]
        remaining = [n] * len(encoded)
        gen_config = self._generation_config(params)
        for b, batch in enumerate(self._batches([len(encoded[i]) for i, _ in items])):
            rows = [encoded[items[k][0]] for k in batch]
            texts, counts = self._generate_batch(rows, params, gen_config, seed=params.seed * 1_000_003 + b)
            done = 0
            for k, text, count in zip(batch, texts, counts):
                i, j = items[k]
                results[i][j] = Completion(text=text, prompt_tokens=len(encoded[i]), completion_tokens=count)
                remaining[i] -= 1
                done += remaining[i] == 0
            if progress and done:
                progress(done)
        return [[c for c in row if c is not None] for row in results]

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        # Everything SamplingParams controls is set explicitly, and top-k / repetition penalty are
        # neutralised: transformers would otherwise fill in top_k=50 and the checkpoint's defaults,
        # and vLLM/OpenAI results would not be comparable. Sampling (temperature > 0) is done by
        # `nucleus.NucleusSampler` under greedy decoding: transformers' top-p sorts the vocabulary.
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=1.0,
            num_beams=1,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            bos_token_id=self.lm.generation_config.bos_token_id,
        )

    def _inputs_with_shared_prefix(
        self, rows: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Model inputs for a batch, reusing one KV cache for the token prefix all rows share.

        Few-shot prompts repeat the same long prefix in every row; encoding it once and repeating its
        cache saves most of the prefill. Rows are laid out [prefix | pads | suffix]. RoPE sees relative
        distances and the pads would stretch them, so explicit position ids (from the mask, pads not
        counted) go with the cache: every token keeps its position and the outputs stay the same.
        """
        shared = _shared_prefix_len(rows)
        if shared < MIN_SHARED_PREFIX:
            input_ids, mask = self._left_pad(rows)
            return input_ids, mask, {}
        prefix, cache = self._prefix_cache(self.generator, rows[0][:shared])
        cache.batch_repeat_interleave(len(rows))
        suffix_ids, suffix_mask = self._left_pad([r[shared:] for r in rows])
        input_ids = torch.cat([prefix.expand(len(rows), -1), suffix_ids], dim=1)
        mask = torch.cat([torch.ones_like(prefix).expand(len(rows), -1), suffix_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids, mask, {"past_key_values": cache, "position_ids": positions}

    @torch.inference_mode()
    def _generate_batch(self, rows: list[list[int]], params: SamplingParams, gen_config: GenerationConfig,
                        seed: int) -> tuple[list[str], list[int]]:
        input_ids, mask, cached = self._inputs_with_shared_prefix(rows)
        width = input_ids.shape[1]
        tracker = _FinishTracker(self.tokenizer, width, len(rows), self.eos_ids, params.stop, self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # A private RNG stream per batch: reproducible, and the caller's global RNG is untouched.
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed % (2**63))
            out = self.generator.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=gen_config,
                stopping_criteria=StoppingCriteriaList([tracker]),
                logits_processor=LogitsProcessorList(
                    [NucleusSampler(params.temperature, params.top_p)] if params.temperature > 0 else []),
                **cached,
            )
        new_tokens = out[:, width:].tolist()
        finished_at = tracker.finished_at.tolist()
        texts, counts = [], []
        for tokens, fin in zip(new_tokens, finished_at):
            count = fin + 1 if fin >= 0 else len(tokens)
            kept = tokens[:count]
            if kept and kept[-1] in self.eos_ids:
                kept = kept[:-1]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            texts.append(_cut_at_stop(text, params.stop))
            counts.append(count)
        return texts, counts

    # ------------------------------------------------------------------ scoring

    def option_token_ids(self, options: Sequence[str]) -> list[int]:
        """The single token id scored for each option (rule shared by all backends, see
        `option_tokens.single_token_id`): the option's own text when it is one token ("A"), else
        the form with a leading space (" A"). Callers wanting the spaced form where both are single
        tokens pass " A" themselves. Raises `OptionTokenError` naming the option when neither form
        is one token, or when two options map to the same token.
        """
        return option_token_ids(self.tokenizer, options, self.model, cache=self._option_ids)

    @torch.inference_mode()
    def score_next_token(self, prompts: Sequence[str], options: Sequence[str],
                         progress: ProgressFn | None = None) -> list[list[float]]:
        """Log-softmax over the whole vocabulary at the next position, at each option's token.

        See `option_token_ids` for how options map to tokens. One forward pass per prompt, batched
        with left padding; position ids follow the attention mask so padding does not shift RoPE.
        A prefix every prompt shares runs once (`_score_after_prefix`).
        """
        option_ids = torch.tensor(self.option_token_ids(options), device=self.device)
        encoded = self._encode(prompts)
        if any(len(r) == 0 for r in encoded):
            raise ValueError("cannot score an empty prompt")
        shared = _shared_prefix_len(encoded)
        if shared >= MIN_SHARED_PREFIX:
            return self._score_after_prefix(encoded, shared, option_ids, progress)
        scores: list[list[float]] = [[] for _ in encoded]
        for batch in self._batches([len(r) for r in encoded]):
            input_ids, mask = self._left_pad([encoded[k] for k in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            # Only the last position goes through the LM head (vocab x hidden).
            logprobs = self._option_logprobs(
                option_ids, None, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                use_cache=False,
            ).tolist()
            for k, row in zip(batch, logprobs):
                scores[k] = row
            if progress:
                progress(len(batch))
        return scores

    def _prefix_cache(self, model: Any, prefix_ids: list[int]) -> tuple[torch.Tensor, Any]:
        """The prefix as a one-row tensor and the key/value cache `model` computes for it."""
        prefix = torch.tensor([prefix_ids], dtype=torch.long, device=self.device)
        return prefix, model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values

    def _score_after_prefix(self, encoded: list[list[int]], shared: int, option_ids: torch.Tensor,
                            progress: ProgressFn | None) -> list[list[float]]:
        """`score_next_token` with the first `shared` tokens (common to every prompt) run once.

        Suffixes are right-padded: the pads come after every real token, so causal attention never
        lets a real token see them, and positions continue from the prefix without a shift. Logits
        are computed only at the positions some row ends on.
        """
        _, prefix_cache = self._prefix_cache(self.lm, encoded[0][:shared])
        scores: list[list[float]] = [[] for _ in encoded]
        for batch in self._batches([len(r) for r in encoded]):
            suffixes = [encoded[k][shared:] for k in batch]
            width = max(len(x) for x in suffixes)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long, device=self.device)
            mask = torch.zeros((len(batch), shared + width), dtype=torch.long, device=self.device)
            mask[:, :shared] = 1
            for row, suffix in enumerate(suffixes):
                input_ids[row, :len(suffix)] = torch.tensor(suffix, device=self.device)
                mask[row, shared:shared + len(suffix)] = 1
            positions = (torch.arange(width, device=self.device) + shared).expand(len(batch), width)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            last = torch.tensor([len(x) - 1 for x in suffixes], device=self.device)
            logprobs = self._option_logprobs(
                option_ids, last, input_ids=input_ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True,
            ).tolist()
            for k, row in zip(batch, logprobs):
                scores[k] = row
            if progress:
                progress(len(batch))
        return scores

    def _option_logprobs(self, option_ids: torch.Tensor, last: torch.Tensor | None,
                         **inputs: Any) -> torch.Tensor:
        """[batch, options]: log-softmax over the vocabulary at each row's position `last` (None: the
        final position), read at `option_ids`, in float32.

        A float32 model computes the logits as usual. A bf16/fp16 one computes the options' logits
        from its last hidden state in float32 (the head's rows for the options, upcast), so the
        difference between two options, all a soft label depends on, carries no rounding of the head's
        output; the vocabulary's normaliser is the low-precision head's (it cancels in the label).
        """
        model = self.lm
        rows = torch.arange(inputs["input_ids"].shape[0], device=self.device)
        keep: Any = 1 if last is None else torch.unique(last)
        pick = slice(None) if last is None else torch.searchsorted(keep, last)
        if model.dtype == torch.float32 or not self._fp32_option_head:
            logits = model(**inputs, logits_to_keep=keep).logits
            at = logits[:, -1, :] if last is None else logits[rows, pick]
            return torch.log_softmax(at.float(), dim=-1)[:, option_ids]
        hidden = model.get_decoder()(**inputs).last_hidden_state
        h = hidden[:, -1, :] if last is None else hidden[rows, last]
        head = model.get_output_embeddings()
        normaliser = torch.logsumexp(head(h).float(), dim=-1, keepdim=True)
        chosen = h.float() @ head.weight[option_ids].float().T
        if getattr(head, "bias", None) is not None:
            chosen = chosen + head.bias[option_ids].float()
        return chosen - normaliser

    def close(self) -> None:
        # Drop the references so the memory can go; callers may keep the backend object around.
        self._generator = None
        for attr in ("lm", "tokenizer"):
            if hasattr(self, attr):
                delattr(self, attr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# Below this many shared tokens the extra forward pass costs more than it saves.
MIN_SHARED_PREFIX = 32


def _shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix common to all rows, leaving every row at least one token of its own."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def create(model: str, *, endpoint: str | None = None, batch_size: int = 16, dtype: str = "auto",
           device: str | None = None) -> TransformersBackend:
    """A transformers backend for `model` (any reference `cai.models.resolve.resolve_model` accepts)."""
    if endpoint:
        warnings.warn("the transformers backend runs the model in-process; ignoring endpoint", stacklevel=2)
    return TransformersBackend(model, batch_size=batch_size, dtype=dtype, device=device)
