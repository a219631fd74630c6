"""Base classes and building blocks of the typed API (`cai.dev/v1alpha1`).

Every spec and status type derives from `ApiModel`: camelCase field names on the wire, unknown fields
rejected, descriptions that become the CRD's `kubectl explain` text. Cross-field rules are declared
once as `Rule`s: the CRD generator emits their CEL and `cai validate` runs their Python twin, so the
apiserver and the offline validator agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GROUP = "cai.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Bounds that keep CEL cost estimates inside the apiserver's budget and manifests reasonable.
MAX_NAME = 253
MAX_SHORT_TEXT = 1024
MAX_TEXT = 8192
MAX_LIST = 512


@dataclass(frozen=True)
class Rule:
    """A cross-field validation rule: CEL for the apiserver, a Python predicate for `cai validate`.

    `check` receives the parsed model and returns True when valid. `field` is the path (relative to
    the object the rule is attached to) named in error messages. `transition` rules compare with the
    old object and only exist on the server (they need `oldSelf`).
    """

    cel: str
    message: str
    field: str = ""
    check: Callable[[Any], bool] | None = None
    transition: bool = False


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,  # Python code may use field names; manifests are parsed with by_name=False
        serialize_by_alias=True,
        extra="forbid",
        validate_assignment=True,
        use_attribute_docstrings=False,
    )

    # Cross-field rules for this object (see `Rule`).
    rules: ClassVar[tuple[Rule, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def nested_model(annotation: Any) -> type[ApiModel] | None:
    """The ApiModel inside an annotation such as `X`, `X | None` or `list[X]`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, ApiModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = nested_model(arg)
        if found is not None:
            return found
    return None
