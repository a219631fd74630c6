"""Which stages a resource needs and what each reads and writes — shared by `cai run` and the operator.

Pure code: given a resource, a way to look up the resources it references, and a storage root, it
says whether the resource can proceed (or waits, or fails) and yields one `StageSpec` per stage.
"""

from .conditions import get_condition, set_condition
from .plan import Blocked, Plan, plan_resource
from .stagespec import StageSpec

__all__ = ["Blocked", "Plan", "StageSpec", "get_condition", "plan_resource", "set_condition"]
