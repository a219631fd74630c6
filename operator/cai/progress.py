"""Progress reporting from inside a stage process.

With CAI_PROGRESS=json (set by `cai run`) each update is one line `@@cai-progress {...}` on stdout that
the local runner turns into rich progress bars. Otherwise (pods, plain shells) it logs a line at most
every CAI_PROGRESS_INTERVAL seconds (default 15) with counts, rate and ETA.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Self

PREFIX = "@@cai-progress "
# The plain progress line (`task: done/total unit (rate/s, ETA)`), so a reader can tell it from others.
LOG_LINE = re.compile(r"^[^\s:][^:]*: \d+/\d+ \S+ \(\d+\.\d+/s(, ETA \d+s)?\)$")


class ProgressReporter:
    """Counts of one task of a stage (`StageContext.progress`), reported as lines (module docstring)."""

    def __init__(self, task: str, total: int, unit: str = "items"):
        self.task, self.total, self.unit = task, total, unit
        self.done = 0
        self.start = time.monotonic()
        self._json = os.environ.get("CAI_PROGRESS") == "json"
        self._interval = float(os.environ.get("CAI_PROGRESS_INTERVAL", "15"))
        self._last = 0.0
        self._emit(force=True)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def update(self, done: int) -> None:
        self.done = done
        self._emit(force=self.done >= self.total)

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._json:
            if force or now - self._last >= 0.2:
                self._last = now
                print(
                    PREFIX
                    + json.dumps(
                        {"task": self.task, "done": self.done, "total": self.total, "unit": self.unit}
                    ),
                    flush=True,
                )
            return
        if force or now - self._last >= self._interval:
            self._last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (
                f", ETA {(self.total - self.done) / rate:.0f}s" if rate > 0 and self.done < self.total else ""
            )
            print(
                f"{self.task}: {self.done}/{self.total} {self.unit} ({rate:.2f}/s{eta})",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.done < self.total and exc[0] is None:
            self.done = self.total
            self._emit(force=True)
