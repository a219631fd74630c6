"""The exact Kubernetes permissions the operator uses: the source of docs/rbac.md and of the RBAC the
integration tests run the operator under (so a missing or extra verb shows up as a failing test).

Where it sits: data only. The Helm chart turns `CLUSTER_RULES` into a ClusterRole (or a Role per watched
namespace) and `LEASE_RULES` into a Role in the operator's own namespace. No rule grants Secrets: stage
pods get credentials through secretKeyRef, resolved by the kubelet, never by the operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RUN_PLURALS = ("constitutions", "critiqueruns", "preferencemodels", "rlaifruns")

# (apiGroup, resources, verbs, why)
Rule = tuple[str, tuple[str, ...], tuple[str, ...], str]  # (API group, resources, verbs, why)

CLUSTER_RULES: tuple[Rule, ...] = (
    ("cai.dev", RUN_PLURALS, ("get", "list", "watch"), "kopf watches and indexes the four kinds"),
    (
        "cai.dev",
        tuple(f"{p}/status" for p in RUN_PLURALS),
        ("patch",),
        "status is written through the status subresource (merge patch with resourceVersion)",
    ),
    (
        "cai.dev",
        tuple(f"{p}/finalizers" for p in RUN_PLURALS[1:]),
        ("update",),
        ("ownerReferences with blockOwnerDeletion on stage Jobs/ConfigMaps/Services "
         "(OwnerReferencesPermissionEnforcement)"),
    ),
    (
        "batch",
        ("jobs",),
        ("get", "list", "watch", "create", "patch"),
        ("stage Jobs: watched (label cai.dev/run), created, suspended/resumed; "
         "get on a 409 to check ownership"),
    ),
    (
        "",
        ("configmaps",),
        ("get", "create"),
        "the run's stage-spec ConfigMap; reading the namespace's cai-storage ConfigMap",
    ),
    ("", ("services",), ("create",), "headless Service of a multi-node (Indexed) training stage"),
    (
        "",
        ("pods",),
        ("list",),
        ("termination messages of a failed stage's pods, and why pods that have not started wait "
         "(label batch.kubernetes.io/job-name)"),
    ),
    (
        "",
        ("events",),
        ("create", "list"),
        ("events on runs (Created Job, stage failed, Succeeded, ...); the Job controller's FailedCreate "
         "events of a stage Job without pods (field selector on the Job)"),
    ),
)

LEASE_RULES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("coordination.k8s.io", ("leases",), ("get", "create", "update"),
     "leader election (Lease cai-operator in the operator's namespace); not needed with --standalone"),
)


# The people who use the operator (ClusterRoles the chart ships, aggregated into the built-in edit/admin
# and view roles). Run authors write runs and Constitutions, never their status (the operator's) and
# nothing else: what their runs may do with pods is the operator's pod policy (pipeline/podpolicy.py).
AUTHOR_RULES: tuple[Rule, ...] = (
    ("cai.dev", RUN_PLURALS,
     ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"),
     "write Constitutions and runs (aggregated to edit and admin)"),
)
VIEWER_RULES: tuple[Rule, ...] = (
    ("cai.dev", RUN_PLURALS, ("get", "list", "watch"),
     "read Constitutions and runs with their status (aggregated to view)"),
)


def as_rules(rules: Sequence[Rule] = CLUSTER_RULES) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
        for group, resources, verbs, _ in rules
    ]


def cluster_role(name: str = "cai-operator") -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": as_rules(CLUSTER_RULES)}


def user_role(rules: Sequence[Rule], name: str) -> dict[str, Any]:
    """A ClusterRole for people (run authors or viewers), without the chart's aggregation labels."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": as_rules(rules)}


def lease_role(namespace: str, name: str = "cai-operator-leader-election") -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": as_rules(LEASE_RULES),
    }


def markdown_table() -> str:
    lines = ["| API group | Resources | Verbs | Why |", "|---|---|---|---|"]
    for group, resources, verbs, why in (*CLUSTER_RULES, *LEASE_RULES):
        lines.append(
            f"| `{group or 'core'}` | {', '.join(f'`{r}`' for r in resources)} | {', '.join(verbs)} | {why} |"
        )
    return "\n".join(lines)
