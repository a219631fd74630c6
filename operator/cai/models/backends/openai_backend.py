"""The OpenAI-compatible backend: generation and option scoring through any server that speaks
the OpenAI API (`vllm serve`, SGLang, llama.cpp's server, hosted APIs), kind `openai`.

Created by `cai.models.backends.load_backend` with `endpoint` = the server's base URL
(e.g. http://vllm.default.svc:8000/v1). The feedback model of a PreferenceModel can live behind
such an endpoint (docs/design.md#ai-feedback).

- The API key comes from `OPENAI_API_KEY` (or none); it is handed to the client only and never
  logged or kept on this object.
- The model name sent to the server defaults to the reference (`hf:org/name` is sent as
  `org/name`, what `vllm serve org/name` serves); override it with `served_model=` or
  `CAI_OPENAI_SERVED_MODEL`.
- The model's tokenizer is loaded locally (via `resolve_model`) when the reference resolves, or
  from `CAI_OPENAI_TOKENIZER`: `render_chat` and `score_next_token` need it, and raw completions
  send token ids with it so every backend feeds the model identical tokens.
- Requests run concurrently (`batch_size` at a time); the client retries 408/409/429/5xx and
  connection errors with exponential backoff (`CAI_OPENAI_MAX_RETRIES`, default 6).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, Literal, Self, TypeVar

import openai

from cai.models.backends.base import Completion, Conversation, ProgressFn, SamplingParams
from cai.models.backends.option_tokens import option_token_ids

log = logging.getLogger(__name__)

T = TypeVar("T")
ScoringMethod = Literal["auto", "logprob_token_ids", "echo"]
_SCORING_METHODS = ("auto", "logprob_token_ids", "echo")
DEFAULT_MAX_RETRIES = 6
DEFAULT_TIMEOUT_S = 600.0


class OpenAIBackendError(RuntimeError):
    """The server's answer cannot be used (missing logprobs, unknown model, no tokenizer)."""


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _default_served_name(model: str) -> str:
    # `vllm serve org/name` serves "org/name"; the reference users write for it is hf:org/name.
    if model.startswith("hf:"):
        return model[3:].split("@", 1)[0]
    return model


class OpenAIBackend:
    """`Backend` over an OpenAI-compatible HTTP server (see `base.Backend` for the contract)."""

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        endpoint: str,
        batch_size: int = 16,
        served_model: str | None = None,
        api_key: str | None = None,
        tokenizer: str | None = None,
        scoring: ScoringMethod | None = None,
        max_retries: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not endpoint:
            raise ValueError(
                "the openai backend needs an endpoint (the base URL of an OpenAI-compatible server)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        scoring = scoring or _env("CAI_OPENAI_SCORING") or "auto"  # type: ignore[assignment]
        if scoring not in _SCORING_METHODS:
            raise ValueError(f"unknown scoring method {scoring!r}; use one of {', '.join(_SCORING_METHODS)}")
        self.model = model
        self.endpoint = endpoint.rstrip("/")
        self.batch_size = batch_size
        self.served_model = served_model or _env("CAI_OPENAI_SERVED_MODEL") or _default_served_name(model)
        self.tokenizer_ref = tokenizer or _env("CAI_OPENAI_TOKENIZER") or model
        self.scoring: str = scoring
        retries = (
            max_retries
            if max_retries is not None
            else int(_env("CAI_OPENAI_MAX_RETRIES") or DEFAULT_MAX_RETRIES)
        )
        # Servers without auth (a plain `vllm serve`) ignore the header; the client insists on one.
        self.client = openai.OpenAI(
            base_url=self.endpoint,
            api_key=api_key or _env("OPENAI_API_KEY") or "EMPTY",
            max_retries=retries,
            timeout=timeout_s,
        )
        self._tok: Any = None
        self._tok_error: str | None = None
        self._tok_lock = threading.Lock()
        self._option_ids: dict[str, int] = {}
        self._model_checked = False
        self._echo_max_tokens = 0
        log.info("openai backend: %s served as %r at %s", model, self.served_model, self.endpoint)

    def __repr__(self) -> str:  # no client (and so no key) in reprs
        return (f"OpenAIBackend(model={self.model!r}, endpoint={self.endpoint!r}, "
                f"served_model={self.served_model!r})")

    # ------------------------------------------------------------------ tokenizer and model name

    def _tokenizer(self) -> Any | None:
        """The model's tokenizer, loaded on first use; None (reason kept) when it cannot be had."""
        with self._tok_lock:
            if self._tok is None and self._tok_error is None:
                try:
                    from transformers import AutoTokenizer

                    from cai.models.resolve import resolve_model

                    self._tok = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_ref))
                except Exception as exc:  # noqa: BLE001 - any failure means "no local tokenizer"; kept for the error
                    self._tok_error = f"{type(exc).__name__}: {exc}"
                    log.info(
                        "openai backend: no local tokenizer for %s (%s)", self.tokenizer_ref, self._tok_error
                    )
            return self._tok

    def _require_tokenizer(self, what: str) -> Any:
        tok = self._tokenizer()
        if tok is None:
            raise OpenAIBackendError(
                f"the openai backend needs {self.tokenizer_ref}'s tokenizer locally to {what}, and it "
                f"could not be loaded ({self._tok_error}); use a model reference that resolves here "
                "(builtin:, hf:, s3://, a path) or point CAI_OPENAI_TOKENIZER at one"
            )
        return tok

    def _check_model(self) -> None:
        """Fail early, naming what the server serves, when the model name is not among them."""
        if self._model_checked:
            return
        self._model_checked = True
        try:
            served = [m.id for m in self.client.models.list().data]
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise OpenAIBackendError(
                    f"{self.endpoint} refused the request ({exc.status_code}); set OPENAI_API_KEY"
                ) from None
            return  # a server without /models: the first real request will tell
        except openai.APIConnectionError as exc:
            raise OpenAIBackendError(f"cannot reach {self.endpoint}: {exc}") from exc
        if served and self.served_model not in served:
            raise OpenAIBackendError(
                f"{self.endpoint} does not serve {self.served_model!r} (it serves: {', '.join(served)}); "
                "set CAI_OPENAI_SERVED_MODEL (or served_model=) to the served name"
            )

    # ------------------------------------------------------------------ concurrency

    def _run(self, jobs: Sequence[Callable[[], T]], done: Callable[[int], None] | None = None) -> list[T]:
        """Run `jobs` on at most `batch_size` threads; results in job order; `done(i)` as each ends."""
        if not jobs:
            return []
        results: list[Any] = [None] * len(jobs)
        with ThreadPoolExecutor(max_workers=min(self.batch_size, len(jobs))) as pool:
            futures: dict[Future[T], int] = {pool.submit(job): i for i, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if done:
                        done(i)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return results

    @staticmethod
    def _per_prompt(progress: ProgressFn | None, per_prompt: list[int]) -> Callable[[int], None] | None:
        """A `done(job)` callback reporting a prompt to `progress` once all its jobs finished."""
        if progress is None:
            return None
        left = list(per_prompt)
        owner: list[int] = [p for p, k in enumerate(per_prompt) for _ in range(k)]

        def done(job: int) -> None:
            p = owner[job]
            left[p] -= 1
            if left[p] == 0:
                progress(1)

        return done

    # ------------------------------------------------------------------ prompts

    def render_chat(self, conversation: Conversation, add_generation_prompt: bool = True) -> str:
        tok = self._require_tokenizer("render chat prompts")
        return tok.apply_chat_template(
            list(conversation), tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, prompt: str) -> list[int]:
        # No special tokens added: rendered prompts carry their own (as in the other backends).
        return list(self._require_tokenizer("tokenize prompts").encode(prompt, add_special_tokens=False))

    # ------------------------------------------------------------------ generation

    @staticmethod
    def _request_args(params: SamplingParams, seed: int | None) -> dict[str, Any]:
        greedy = params.temperature <= 0
        args: dict[str, Any] = {
            "n": 1,
            "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            args["stop"] = list(params.stop)
        if seed is not None:
            args["seed"] = seed
        return args

    @staticmethod
    def _samples(params: SamplingParams, n: int, count: int) -> list[tuple[int, int | None]]:
        """(prompt index, seed) for each request. One request per sample with n=1: the usage block
        then gives each sample's exact token count. Seeds follow the vLLM backend's scheme
        (prompt seed + sample index), so a vLLM server samples what the offline engine does.
        Greedy prompts are requested once and repeated."""
        if params.temperature <= 0:
            return [(i, None) for i in range(count)]
        return [(i, (params.seed * 1_000_003 + i * n) % (2**62) + j) for i in range(count) for j in range(n)]

    def _collect(self, items: list[tuple[int, int | None]], outs: list[Completion], count: int, n: int,
                 greedy: bool) -> list[list[Completion]]:
        results: list[list[Completion]] = [[] for _ in range(count)]
        for (i, _), completion in zip(items, outs):
            results[i].append(completion)
        return [row * n for row in results] if greedy else results

    def chat(self, conversations: Sequence[Conversation], params: SamplingParams, n: int = 1,
             progress: ProgressFn | None = None) -> list[list[Completion]]:
        """Sent to /chat/completions: the server applies the model's chat template."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        self._check_model()
        items = self._samples(params, n, len(conversations))

        def job(i: int, seed: int | None) -> Completion:
            r = self.client.chat.completions.create(
                model=self.served_model, messages=list(conversations[i]),
                **self._request_args(params, seed),
            )
            usage = r.usage
            return Completion(
                text=r.choices[0].message.content or "",
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
            )

        counts = [sum(1 for k, _ in items if k == i) for i in range(len(conversations))]
        outs = self._run([functools.partial(job, i, s) for i, s in items], self._per_prompt(progress, counts))
        return self._collect(items, outs, len(conversations), n, params.temperature <= 0)

    def complete(self, prompts: Sequence[str], params: SamplingParams, n: int = 1,
                 progress: ProgressFn | None = None) -> list[list[Completion]]:
        """Sent to /completions, as token ids when the tokenizer is local (else as text, which the
        server tokenizes itself and may prefix with BOS)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        self._check_model()
        payloads: list[Any] = (
            [self._encode(p) for p in prompts] if self._tokenizer() is not None else list(prompts)
        )
        items = self._samples(params, n, len(prompts))

        def job(i: int, seed: int | None) -> Completion:
            r = self.client.completions.create(
                model=self.served_model, prompt=payloads[i], **self._request_args(params, seed)
            )
            usage = r.usage
            return Completion(
                text=r.choices[0].text,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
            )

        counts = [sum(1 for k, _ in items if k == i) for i in range(len(prompts))]
        outs = self._run([functools.partial(job, i, s) for i, s in items], self._per_prompt(progress, counts))
        return self._collect(items, outs, len(prompts), n, params.temperature <= 0)

    # ------------------------------------------------------------------ scoring

    def option_token_ids(self, options: Sequence[str]) -> list[int]:
        """The token scored for each option; same rule as the transformers backend."""
        tok = self._require_tokenizer("map options to tokens")
        return option_token_ids(tok, options, self.model, cache=self._option_ids)

    def score_next_token(self, prompts: Sequence[str], options: Sequence[str],
                         progress: ProgressFn | None = None) -> list[list[float]]:
        """Log-probability of each option token after each prompt, read exactly from the server.

        `echo` (portable): one /completions request per (prompt, option) with the prompt's token
        ids plus the option token, `echo=True`, `max_tokens=0`, `logprobs=0`; the echoed logprob
        at the option's position is log-softmax over the vocabulary at that position. vLLM serves
        it from prompt logprobs (which bypass its prefix cache, so each costs a full prefill).
        `logprob_token_ids` (vLLM extension): one request per prompt that asks for exactly the
        option tokens' logprobs at the first generated position. `auto` probes the server once
        with the extension and falls back to `echo` if the answer is not exactly what was asked.
        """
        option_ids = self.option_token_ids(options)
        encoded = [self._encode(p) for p in prompts]
        if any(len(r) == 0 for r in encoded):
            raise ValueError("cannot score an empty prompt")
        if not encoded:
            return []
        self._check_model()
        if self.scoring == "auto":
            self.scoring = self._probe_logprob_token_ids(encoded[0], option_ids)
            log.info("openai backend: scoring options with %s at %s", self.scoring, self.endpoint)
        if self.scoring == "logprob_token_ids":
            jobs = [lambda ids=ids: self._score_selected(ids, option_ids) for ids in encoded]
            return self._run(jobs, self._per_prompt(progress, [1] * len(encoded)))
        k = len(option_ids)
        flat = self._run(
            [functools.partial(self._score_echo, ids, t) for ids in encoded for t in option_ids],
            self._per_prompt(progress, [k] * len(encoded)),
        )
        return [flat[i * k:(i + 1) * k] for i in range(len(encoded))]

    def _probe_logprob_token_ids(self, ids: list[int], option_ids: list[int]) -> str:
        try:
            self._score_selected(ids, option_ids)
        except (openai.BadRequestError, openai.UnprocessableEntityError, OpenAIBackendError) as exc:
            log.info("openai backend: server does not answer logprob_token_ids (%s); using echo", exc)
            return "echo"
        return "logprob_token_ids"

    def _score_selected(self, ids: list[int], option_ids: list[int]) -> list[float]:
        r = self.client.completions.create(
            model=self.served_model, prompt=ids, max_tokens=1, temperature=0.0, logprobs=len(option_ids),
            extra_body={"logprob_token_ids": option_ids, "return_tokens_as_token_ids": True},
        )
        lp = r.choices[0].logprobs
        top = (lp.top_logprobs or [None])[0] if lp else None
        keys = [f"token_id:{t}" for t in option_ids]
        # A server that ignores the extension returns ordinary top-k (or nothing): refuse it rather
        # than read a wrong or missing option.
        if not top or any(k not in top for k in keys):
            raise OpenAIBackendError(f"the server did not return the requested option logprobs (got {top!r})")
        return [float(top[k]) for k in keys]

    def _score_echo(self, ids: list[int], option_id: int) -> float:
        try:
            r = self.client.completions.create(
                model=self.served_model,
                prompt=ids + [option_id],
                echo=True,
                max_tokens=self._echo_max_tokens,
                logprobs=0,
                temperature=0.0,
            )
        except openai.BadRequestError:
            if self._echo_max_tokens:
                raise
            # Some servers refuse max_tokens=0; one generated token past the option changes nothing.
            self._echo_max_tokens = 1
            return self._score_echo(ids, option_id)
        lp = r.choices[0].logprobs
        values = lp.token_logprobs if lp else None
        # Position len(ids) is the option token whether or not the server also generated a token.
        if not values or len(values) <= len(ids) or values[len(ids)] is None:
            raise OpenAIBackendError(
                f"{self.endpoint} returned no echoed prompt logprobs (does it support echo with logprobs?)"
            )
        return float(values[len(ids)])

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create(model: str, *, endpoint: str | None = None, batch_size: int = 16, dtype: str = "auto",
           **kwargs: Any) -> OpenAIBackend:
    """An OpenAI-compatible backend for `model` served at `endpoint` (`dtype` is the server's
    business and ignored). Extra keyword arguments go to `OpenAIBackend`."""
    if not endpoint:
        raise ValueError("the openai backend needs an endpoint (the base URL of an OpenAI-compatible server)")
    return OpenAIBackend(model, endpoint=endpoint, batch_size=batch_size, **kwargs)

