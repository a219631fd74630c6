"""Model resolution: a model reference (`cai.models.refs`) becomes a local Hugging Face directory.

Sits between the references users write and the backends/stages that call `from_pretrained`. Each
scheme has its own module: built-in models (`builtin`), Hub snapshots (`hub`), object-store copies
(`copies`), all in one cache (`cache`). torch/transformers are imported inside functions only, so
importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from cai.models.builtin import resolve_builtin
from cai.models.cache import ModelResolveError
from cai.models.copies import resolve_uri
from cai.models.hub import resolve_hf
from cai.models.refs import ModelRef, local_dir_problem, parse_model_ref

__all__ = ["ModelResolveError", "resolve_model"]


def resolve_model(ref: str | ModelRef) -> Path:
    """A local Hugging Face model directory for `ref`, preparing or downloading it if needed.

    Raises `ValueError` for a malformed reference and `ModelResolveError` when the model cannot be
    obtained (missing package, offline hub, checksum mismatch, not a model directory).
    """
    parsed = ref if isinstance(ref, ModelRef) else parse_model_ref(ref)
    if parsed.scheme == "builtin":
        return resolve_builtin(parsed.target)
    if parsed.scheme == "hf":
        return resolve_hf(parsed)
    if parsed.scheme in ("s3", "file"):
        return resolve_uri(parsed.uri)
    path = Path(parsed.target).expanduser().resolve()
    problem = local_dir_problem(path)
    if problem:
        raise ModelResolveError(f"model {parsed.raw!r}: {problem}")
    return path
