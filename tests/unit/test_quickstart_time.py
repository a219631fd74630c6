"""The quickstart's wall time is stated once, in the README (measured), and the examples refer to it
rather than repeat a figure that goes stale (issue 16: the YAML said 25 minutes, the README 16.6)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MINUTES = re.compile(r"\b\d+(?:\.\d+)?\s*(?:min\b|minutes?\b)")


def test_examples_state_no_time_of_their_own_and_point_to_the_readme():
    for path in sorted((ROOT / "examples" / "quickstart").glob("*.yaml")):
        comments = "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
        assert not MINUTES.search(comments), f"{path.name}: a time figure; refer to the README instead"
    referring = [p.name for p in (ROOT / "examples" / "quickstart").glob("*.yaml")
                 if 'README, section "Two commands"' in " ".join(p.read_text().replace("#", " ").split())]
    assert referring, "no quickstart example says where its measured time is"


def test_readme_states_the_measured_quickstart_time_in_the_section_the_examples_name():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"Time on 2 CPU cores \(measured [0-9-]+.*?\): \d+(?:\.\d+)? min from a fresh", section, re.DOTALL)
