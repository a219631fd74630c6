"""`make quality`: run the quality profile (examples/quality) and print its wall time, peak memory and report.

Runs `cai run constitutions/harmless.yaml examples/quality/` (resumable: rerunning skips finished
stages), then the RLAIFRun's report summary. Peak memory is the largest resident set of any process
the run started (each stage runs in its own process), read from the kernel's accounting of children.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=f"file://{ROOT}/quality-out")
    args = parser.parse_args()
    started = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "cai", "run", str(ROOT / "constitutions" / "harmless.yaml"),
                          str(ROOT / "examples" / "quality"), "--store", args.store])
    elapsed = time.monotonic() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(f"quality profile: exit {rc}, wall time {elapsed / 60:.1f} min, peak memory {peak_gib:.1f} GiB "
          "(largest process)", flush=True)
    if rc != 0:
        return rc
    return subprocess.call([sys.executable, "-m", "cai", "report", "quality-rl", "--store", args.store])


if __name__ == "__main__":
    raise SystemExit(main())
