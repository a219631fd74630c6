"""The operator's docs say what the code does: the RBAC table is the RBAC module's, every exported
metric is documented, every operator environment variable is documented."""

from __future__ import annotations

import re
from pathlib import Path

from cai.controller import metrics, rbac

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_rbac_doc_matches_the_module():
    assert rbac.markdown_table() in (DOCS / "rbac.md").read_text()
    assert not any("secret" in r for _, resources, _, _ in rbac.CLUSTER_RULES + rbac.LEASE_RULES for r in resources)
    assert not any("delete" in verbs for _, _, verbs, _ in rbac.CLUSTER_RULES + rbac.LEASE_RULES)


def test_every_metric_is_documented():
    text = (DOCS / "metrics.md").read_text()
    names = {m.name for m in metrics.REGISTRY.collect() if m.name.startswith("cai_")}
    names |= {"cai_runs", "cai_preference_model_accuracy", "cai_policy_reward", "cai_policy_kl"}
    # Counters are collected without their _total suffix.
    missing = [n for n in sorted(names) if f"`{n}`" not in text and f"`{n}_total`" not in text]
    assert not missing, missing


def test_every_config_variable_is_documented():
    source = (Path(__file__).resolve().parents[2] / "operator/cai/controller/config.py").read_text()
    variables = set(re.findall(r'"(CAI_[A-Z_]+|POD_NAME|POD_NAMESPACE)"', source))
    text = (DOCS / "operator.md").read_text()
    assert not [v for v in sorted(variables) if v not in text]


def test_hello_example_is_valid_and_small():
    """docs/operator.md's `hello` CritiqueRun is what a newcomer applies first: it must be quick to run."""
    import yaml

    from cai.api.manifest import parse_resource

    text = (DOCS / "operator.md").read_text()
    block = re.search(r"apply -f - <<'EOF'\n(.*?)\nEOF\n", text, re.DOTALL)
    assert block, "docs/operator.md: the `hello` CritiqueRun heredoc is missing"
    res, problems = parse_resource(yaml.safe_load(block.group(1)), "docs/operator.md")
    assert not problems and res is not None and res.name == "hello"
    spec = res.spec
    assert spec.prompts.limit is not None and spec.prompts.limit <= 8
    assert spec.prompts.limit * spec.revisions <= 16
    assert spec.generation.max_new_tokens <= 64
