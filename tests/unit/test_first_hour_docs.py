"""What a newcomer reads first says one thing (issue 16): the quickstart's wall time is stated once, in
the README (measured), and the examples refer to it; the README's "Running the operator by hand" gives
the complete commands, the same as docs/operator.md's."""

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


def _operator_by_hand() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- operator-by-hand:begin.*?```bash\n(.*?)```\n<!-- operator-by-hand:end -->", readme,
                      re.DOTALL)
    assert block, "README.md: the operator-by-hand block is missing"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_runs_the_operator_by_hand_with_path_endpoint_and_storage_secret():
    lines = _operator_by_hand()
    text = "\n".join(lines)
    path = next(line for line in lines if "PATH=" in line)
    assert "$PWD/.cache/cluster/bin" in path and "$PWD/.venv/bin" in path
    assert "CAI_S3_ENDPOINT=$AWS_ENDPOINT_URL" in text  # stage Jobs get the endpoint ...
    assert "create secret generic cai-s3" in text and "CAI_STORAGE_SECRET=cai-s3" in text  # ... and the keys
    assert "source .cache/cluster/s3.env" in text


def test_readme_and_operator_doc_give_the_same_commands():
    doc = (ROOT / "docs" / "operator.md").read_text().splitlines()
    missing = [line for line in _operator_by_hand() if line not in doc]
    assert not missing, f"README lines not in docs/operator.md: {missing}"
