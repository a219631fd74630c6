"""Models: references (`refs`, pure Python), resolution to local directories (`resolve`), and
generation backends (`backends`). Nothing here imports torch at import time."""

from ..api.kinds import DEFAULT_MODEL  # the default of spec.model
from .refs import BUILTIN_MODELS, ModelRef, check_model_ref, parse_model_ref

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "ModelRef", "check_model_ref", "parse_model_ref"]
