"""Kubernetes-style conditions on typed status objects: set with transition times, look up by type."""

from __future__ import annotations

from ..api.common import Condition, ConditionStatus, ObjectStatus, now_rfc3339


def get_condition(status: ObjectStatus | None, type_: str) -> Condition | None:
    if status is None:
        return None
    return next((c for c in status.conditions if c.type == type_), None)


def set_condition(status: ObjectStatus, type_: str, value: ConditionStatus, reason: str, message: str = "",
                  generation: int | None = None) -> bool:
    """Set a condition; lastTransitionTime changes only when the status value changes.
    True if anything changed."""
    current = get_condition(status, type_)
    if current is None:
        status.conditions = [*status.conditions, Condition(
            type=type_, status=value, reason=reason, message=message,
            last_transition_time=now_rfc3339(), observed_generation=generation,
        )]
        return True
    if (current.status, current.reason, current.message, current.observed_generation) == (
        value,
        reason,
        message,
        generation,
    ):
        return False
    if current.status != value:
        current.last_transition_time = now_rfc3339()
    current.status, current.reason, current.message, current.observed_generation = (
        value,
        reason,
        message,
        generation,
    )
    return True


def is_true(status: ObjectStatus | None, type_: str) -> bool:
    c = get_condition(status, type_)
    return c is not None and c.status == "True"


def is_false(status: ObjectStatus | None, type_: str) -> bool:
    c = get_condition(status, type_)
    return c is not None and c.status == "False"
