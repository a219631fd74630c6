"""Typed API of `cai.dev/v1alpha1`: the four kinds, shared types, manifest parsing.

Imports only pydantic: the operator image and `cai validate` use it without ML libraries.
"""

from .base import API_VERSION, GROUP, VERSION, ApiModel, Rule
from .kinds import KINDS, STAGES, KindInfo, StageInfo
from .manifest import ManifestError, Resource, load_manifests, parse_resource

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "STAGES",
    "VERSION",
    "ApiModel",
    "KindInfo",
    "ManifestError",
    "Resource",
    "Rule",
    "StageInfo",
    "load_manifests",
    "parse_resource",
]
