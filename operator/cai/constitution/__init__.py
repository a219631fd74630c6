"""Constitutions at work: seeded principle draws and the prompts built from principles.

`sampling` draws principles reproducibly (a draw depends only on the seed and the row's identity,
never on batching or on which rows ran before, so resumed runs draw the same principles).
`critique` renders the SL critique→revision conversations (the RL prompts live in `cai.feedback`).
"""

from .sampling import draw, draw_many, stable_seed

__all__ = ["draw", "draw_many", "stable_seed"]
