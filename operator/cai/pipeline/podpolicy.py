"""The pod policy: what a run may change in its stage pods (`spec.resources.podTemplate` and
`spec.resources.serviceAccountName`), as an allow-list.

Where it sits: pure. The operator checks every run against it before anything is created (a refusal is
`InvalidSpec` naming the field) and again for each stage Job; its builders then force the restricted
securityContext onto the merged pod. `cai validate` runs the same rule without a namespace's policy: the
parts cluster admins can widen per namespace (ServiceAccounts, Secrets, volume types, environment names)
are only checked by the operator, which knows them. docs/operator.md#pod-policy explains each decision.

Why an allow-list: a run author may create runs but not pods. Anything the template could use to run code
of its own in the stage container (which holds the namespace's storage credentials), reach the node, or
act as another identity turns the operator's Job permission into theirs. So a field is refused unless it
is listed here as harmless (scheduling, plain environment, scratch volumes, restricted security settings).
The template may only add or override: strategic-merge directives and nulls, which could delete what the
operator set, are refused too.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

STAGE_CONTAINER = "stage"
TEMPLATE = "spec.resources.podTemplate"
SERVICE_ACCOUNT = "spec.resources.serviceAccountName"

# Volumes the operator adds itself (never replaced by a template) and where stage pods read their spec.
OPERATOR_VOLUMES = frozenset({"stage-spec", "tmp", "dshm"})
# Mounts are allowed below these directories only: none of them is on the stage's import or command path
# (the image's venv is /opt/cai, its working directory /tmp, its spec /etc/cai).
MOUNT_ROOTS = ("/data", "/mnt", "/models", "/scratch", "/workspace", "/cache")
# Environment names a template may set without a namespace policy: model hub, threading, NCCL and proxy
# settings. Names that steer what code runs (PATH, LD_*, PYTHON*), the storage client (AWS_*, CAI_S3_*)
# or the operator's own wiring are not among them.
ENV_NAMES = ("HF_*", "HUGGING_FACE_HUB_*", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "NCCL_*",
             "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCH_NCCL_*", "FI_PROVIDER", "FI_EFA_*", "HTTP_PROXY",
             "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "TZ", "CAI_CACHE_DIR",
             "CAI_CHECKPOINT_STEPS")
# Volume types a template may use without a namespace policy; `secret` volumes need their Secret allowed.
VOLUME_TYPES = frozenset({"emptyDir", "configMap", "downwardAPI", "projected", "ephemeral", "secret"})
# Volume types no policy can allow: they reach the node's filesystem or run a git clone on the node.
NEVER_VOLUME_TYPES = frozenset({"hostPath", "gitRepo"})
PROJECTED_SOURCES = frozenset({"configMap", "downwardAPI", "secret"})
# Legacy security annotations the kubelet may still honour (AppArmor, seccomp before their fields existed).
SECURITY_ANNOTATIONS = ("container.apparmor.security.beta.kubernetes.io/",
                        "seccomp.security.alpha.kubernetes.io/",
                        "container.seccomp.security.alpha.kubernetes.io/")
RESERVED_LABEL_PREFIXES = ("cai.dev/", "kueue.x-k8s.io/", "batch.kubernetes.io/", "job-name",
                           "controller-uid", "app.kubernetes.io/managed-by")

# Pod fields, each allowed (None: any value; a function: checked) or refused with the reason shown.
_HARMLESS = None
_REFUSED_POD = {
    "hostNetwork": "host namespaces are not allowed",
    "hostPID": "host namespaces are not allowed",
    "hostIPC": "host namespaces are not allowed",
    "nodeName": "pods are placed by the scheduler: use spec.resources.nodeSelector or affinity",
    "serviceAccountName": f"set {SERVICE_ACCOUNT} instead (checked against the namespace's policy)",
    "serviceAccount": f"set {SERVICE_ACCOUNT} instead (checked against the namespace's policy)",
    "initContainers": "only the stage container may be changed",
    "ephemeralContainers": "only the stage container may be changed",
    "shareProcessNamespace": "containers may not share a process namespace",
    "runtimeClassName": "the container runtime is chosen by the cluster",
    "overhead": "set by the cluster (RuntimeClass admission)",
    "priority": "set by the cluster from priorityClassName",
    "restartPolicy": "set by the operator",
    "hostname": "set by the operator",
    "subdomain": "set by the operator",
}
_POD_FIELDS = {
    "affinity", "nodeSelector", "tolerations", "topologySpreadConstraints", "schedulerName",
    "schedulingGates", "priorityClassName", "preemptionPolicy", "readinessGates", "dnsPolicy", "dnsConfig",
    "hostAliases",
    "enableServiceLinks", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "imagePullSecrets", "os",
    "resourceClaims", "resources", "setHostnameAsFQDN", "securityContext", "volumes", "containers",
    "automountServiceAccountToken", "hostUsers",
}
_REFUSED_CONTAINER = {
    "image": "the stage image is set by the operator's configuration",
    "command": "the stage command is set by the operator",
    "args": "the stage command is set by the operator",
    "workingDir": "the working directory is part of the stage's import path",
    "envFrom": "set variables one by one in env (their names are checked)",
    "lifecycle": "hooks would run commands in the stage container",
    "livenessProbe": "probes would run commands in the stage container",
    "readinessProbe": "probes would run commands in the stage container",
    "startupProbe": "probes would run commands in the stage container",
    "terminationMessagePath": "set by the operator (it reads the stage's failure message there)",
    "terminationMessagePolicy": "set by the operator (it reads the stage's failure message there)",
    "volumeDevices": "raw block devices are not allowed",
    "restartPolicy": "set by the operator",
    "restartPolicyRules": "set by the operator",
}
_CONTAINER_FIELDS = {"name", "env", "volumeMounts", "resources", "resizePolicy", "ports", "securityContext",
                     "imagePullPolicy", "stdin", "stdinOnce", "tty"}


class PolicyError(ValueError):
    """A pod policy setting cannot be used (the message names the key)."""


@dataclass(frozen=True)
class PodPolicy:
    """What cluster admins allow beyond the defaults, in one namespace or in all of them."""

    service_account_names: frozenset[str] = frozenset()
    secret_names: frozenset[str] = frozenset()  # Secrets a template may use in env or volumes
    volume_types: frozenset[str] = frozenset()  # extra volume types, e.g. persistentVolumeClaim, csi
    env_names: tuple[str, ...] = ()  # extra environment names (fnmatch patterns, e.g. WANDB_*)

    KEYS: ClassVar[dict[str, str]] = {
        "serviceAccountNames": "service_account_names", "secretNames": "secret_names",
        "volumeTypes": "volume_types", "envNames": "env_names"}

    def __or__(self, other: PodPolicy) -> PodPolicy:
        return PodPolicy(self.service_account_names | other.service_account_names,
                         self.secret_names | other.secret_names, self.volume_types | other.volume_types,
                         tuple(dict.fromkeys(self.env_names + other.env_names)))

    @classmethod
    def from_wire(cls, doc: Any, where: str) -> PodPolicy:
        """From {serviceAccountNames, secretNames, volumeTypes, envNames} (lists of strings)."""
        if not isinstance(doc, Mapping):
            raise PolicyError(f"{where}: expected an object with keys {', '.join(cls.KEYS)}")
        values: dict[str, Any] = {}
        for key, value in doc.items():
            if key not in cls.KEYS:
                raise PolicyError(f"{where}.{key}: unknown key (expected one of {', '.join(cls.KEYS)})")
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise PolicyError(f"{where}.{key}: expected a list of non-empty strings")
            values[cls.KEYS[key]] = tuple(value) if key == "envNames" else frozenset(value)
        never = sorted(NEVER_VOLUME_TYPES & values.get("volume_types", frozenset()))
        if never:
            raise PolicyError(f"{where}.volumeTypes: {', '.join(never)} cannot be allowed (node access)")
        return cls(**values)


@dataclass(frozen=True)
class ClusterPodPolicy:
    """The operator's policy: the stage ServiceAccount, a policy for every namespace, and per-namespace
    additions (`CAI_POD_POLICY`, the chart's `stages.podPolicy`)."""

    stage_service_account: str | None = None  # what pods run as when a run names none
    everywhere: PodPolicy = field(default_factory=PodPolicy)
    namespaces: Mapping[str, PodPolicy] = field(default_factory=dict)

    def for_namespace(self, namespace: str) -> PodPolicy:
        policy = self.everywhere | self.namespaces.get(namespace, PodPolicy())
        if self.stage_service_account:
            policy = policy | PodPolicy(service_account_names=frozenset({self.stage_service_account}))
        return policy

    @classmethod
    def from_wire(cls, doc: Any, stage_service_account: str | None = None) -> ClusterPodPolicy:
        """From {serviceAccountNames, ..., namespaces: {<namespace>: {serviceAccountNames, ...}}}."""
        if not isinstance(doc, Mapping):
            raise PolicyError("expected an object")
        rest = {k: v for k, v in doc.items() if k != "namespaces"}
        per_ns = doc.get("namespaces") or {}
        if not isinstance(per_ns, Mapping):
            raise PolicyError("namespaces: expected an object {namespace: policy}")
        return cls(stage_service_account, PodPolicy.from_wire(rest, "podPolicy"),
                   {ns: PodPolicy.from_wire(p, f"namespaces.{ns}") for ns, p in per_ns.items()})


# ------------------------------------------------------------------------------------------------ check


class _Check:
    """One walk over a template; `problems` collects (field path, what was expected)."""

    def __init__(self, policy: PodPolicy | None):
        self.policy = policy  # None: only the rules no namespace policy can change (cai validate)
        self.problems: list[tuple[str, str]] = []

    def refuse(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    # ---- the whole template

    def template(self, tpl: Any) -> None:
        if not isinstance(tpl, dict):
            self.refuse(TEMPLATE, "expected a PodTemplateSpec object (metadata, spec)")
            return
        self.no_directives(tpl, TEMPLATE)
        for key, value in tpl.items():
            path = f"{TEMPLATE}.{key}"
            if key == "metadata":
                self.metadata(value, path)
            elif key == "spec":
                self.pod(value, path)
            elif not key.startswith("$"):
                self.refuse(path, "expected only metadata (labels, annotations) and spec")

    def no_directives(self, value: Any, path: str) -> None:
        """Strategic-merge directives and nulls would delete what the operator set: refused everywhere."""
        if isinstance(value, dict):
            for key, sub in value.items():
                where = f"{path}.{key}"
                if key.startswith("$"):
                    self.refuse(where, "merge directives ($patch, $retainKeys, ...) are not allowed: the "
                                       "template may only add or override fields")
                elif sub is None:
                    self.refuse(where, "null (delete) is not allowed: the template may only add or override")
                else:
                    self.no_directives(sub, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                named = isinstance(item, dict) and isinstance(item.get("name"), str)
                self.no_directives(item, f"{path}[name={item['name']}]" if named else f"{path}[{i}]")

    def metadata(self, meta: Any, path: str) -> None:
        if not isinstance(meta, dict):
            self.refuse(path, "expected an object")
            return
        for key, value in meta.items():
            where = f"{path}.{key}"
            if key not in ("labels", "annotations"):
                self.refuse(where, "expected only labels and annotations")
            elif not isinstance(value, dict):
                self.refuse(where, "expected a map of strings")
            elif key == "labels":
                for label in value:
                    if str(label).startswith(RESERVED_LABEL_PREFIXES):
                        self.refuse(f"{where}[{label}]", "labels the operator or the Job controller sets "
                                                         "cannot be changed")
            else:
                for ann in value:
                    if str(ann).startswith(SECURITY_ANNOTATIONS):
                        self.refuse(f"{where}[{ann}]", "security annotations are not allowed (the operator "
                                                       "sets the pod's securityContext)")

    # ---- the pod

    def pod(self, spec: Any, path: str) -> None:
        if not isinstance(spec, dict):
            self.refuse(path, "expected a PodSpec object")
            return
        for key, value in spec.items():
            where = f"{path}.{key}"
            if key.startswith("$"):
                continue
            if key in _REFUSED_POD:
                self.refuse(where, f"not allowed: {_REFUSED_POD[key]}")
            elif key not in _POD_FIELDS:
                self.refuse(where, "not an allowed pod field (the pod policy is an allow-list: "
                                   "docs/operator.md#pod-policy)")
            elif key == "automountServiceAccountToken" and value is not False:
                self.refuse(where, f"only false is allowed (the token follows {SERVICE_ACCOUNT})")
            elif key == "hostUsers" and value is not False:
                self.refuse(where, "only false (a user namespace) is allowed")
            elif key == "securityContext":
                self.security_context(value, where, pod=True)
            elif key == "volumes":
                self.volumes(value, where)
            elif key == "containers":
                self.containers(value, where, self.volume_names(spec))

    @staticmethod
    def volume_names(spec: dict[str, Any]) -> set[str]:
        vols = spec.get("volumes")
        names = {v.get("name") for v in vols if isinstance(v, dict)} if isinstance(vols, list) else set()
        return {str(n) for n in names if n}

    def keyed(self, items: Any, path: str, key: str, what: str) -> Iterator[tuple[dict[str, Any], str]]:
        """Each item of a list whose items name themselves by `key`, with its path (`path[key=value]`)."""
        if not isinstance(items, list):
            self.refuse(path, f"expected a list of {what}")
            return
        for item in items:
            value = item.get(key) if isinstance(item, dict) else None
            if not isinstance(item, dict) or not isinstance(value, str) or not value:
                self.refuse(path, f"every item of {what} needs a {key}")
                continue
            yield item, f"{path}[{key}={value}]"

    def volumes(self, vols: Any, path: str) -> None:
        for vol, where in self.keyed(vols, path, "name", "volumes"):
            name = vol["name"]
            if name in OPERATOR_VOLUMES:
                self.refuse(where, f"volume {name} is the operator's and cannot be replaced")
                continue
            types = [k for k in vol if k != "name"]
            for vtype in types:
                self.volume_type(vtype, vol[vtype], f"{where}.{vtype}")

    def volume_type(self, vtype: str, source: Any, where: str) -> None:
        if vtype in NEVER_VOLUME_TYPES:
            self.refuse(where, f"{vtype} volumes are not allowed (they reach the node)")
            return
        if vtype not in VOLUME_TYPES:
            if self.policy is not None and vtype not in self.policy.volume_types:
                self.refuse(where, f"{vtype} volumes are not allowed in this namespace (allowed: "
                                   f"{', '.join(sorted(VOLUME_TYPES | self.policy.volume_types))}; cluster "
                                   "admins allow more with stages.podPolicy.volumeTypes)")
            return
        if vtype == "secret" and isinstance(source, dict):
            self.secret(source.get("secretName"), f"{where}.secretName")
        elif vtype == "projected" and isinstance(source, dict):
            for i, src in enumerate(source.get("sources") or []):
                for kind in src if isinstance(src, dict) else ():
                    at = f"{where}.sources[{i}].{kind}"
                    if kind not in PROJECTED_SOURCES:
                        self.refuse(at, f"projected {kind} sources are not allowed "
                                        f"(allowed: {', '.join(sorted(PROJECTED_SOURCES))})")
                    elif kind == "secret" and isinstance(src[kind], dict):
                        self.secret(src[kind].get("name"), f"{at}.name")

    def secret(self, name: Any, where: str) -> None:
        if self.policy is not None and name not in self.policy.secret_names:
            allowed = ", ".join(sorted(self.policy.secret_names)) or "none"
            self.refuse(where, f"Secret {name!r} is not allowed in this namespace (allowed: {allowed}; the "
                               "storage Secret reaches the stage through the operator; cluster admins allow "
                               "more with stages.podPolicy.secretNames)")

    # ---- containers

    def containers(self, containers: Any, path: str, volumes: set[str]) -> None:
        for c, where in self.keyed(containers, path, "name", "containers"):
            if c["name"] != STAGE_CONTAINER:
                self.refuse(where, f"only the {STAGE_CONTAINER!r} container may be changed (no extra "
                                   "containers)")
                continue
            for key, value in c.items():
                at = f"{where}.{key}"
                if key in _REFUSED_CONTAINER:
                    self.refuse(at, f"not allowed: {_REFUSED_CONTAINER[key]}")
                elif key not in _CONTAINER_FIELDS:
                    self.refuse(at, "not an allowed container field (the pod policy is an allow-list: "
                                    "docs/operator.md#pod-policy)")
                elif key == "env":
                    self.env(value, at)
                elif key == "volumeMounts":
                    self.mounts(value, at, volumes)
                elif key == "ports":
                    for port in value if isinstance(value, list) else ():
                        if isinstance(port, dict) and ("hostPort" in port or "hostIP" in port):
                            self.refuse(f"{at}[containerPort={port.get('containerPort')}]",
                                        "hostPort and hostIP are not allowed")
                elif key == "securityContext":
                    self.security_context(value, at, pod=False)

    def env(self, env: Any, path: str) -> None:
        for var, where in self.keyed(env, path, "name", "variables"):
            name = var["name"]
            if reserved_env(name):
                self.refuse(where, f"variable {name} is reserved: it steers which code runs, the storage "
                                   "client or the operator's own wiring")
                continue
            patterns = ENV_NAMES + self.policy.env_names if self.policy is not None else ()
            if self.policy is not None and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                self.refuse(where, f"variable {name} is not allowed in this namespace (allowed: "
                                   f"{', '.join(patterns)}; cluster admins allow more with "
                                   "stages.podPolicy.envNames)")
                continue
            source = var.get("valueFrom")
            if isinstance(source, dict):
                for kind, ref in source.items():
                    if kind == "secretKeyRef":
                        self.secret(ref.get("name") if isinstance(ref, dict) else None, f"{where}.valueFrom."
                                                                                         "secretKeyRef.name")
                    elif kind not in ("configMapKeyRef", "fieldRef", "resourceFieldRef"):
                        self.refuse(f"{where}.valueFrom.{kind}", "not an allowed source (value, "
                                    "configMapKeyRef, fieldRef, resourceFieldRef, secretKeyRef)")

    def mounts(self, mounts: Any, path: str, volumes: set[str]) -> None:
        for m, where in self.keyed(mounts, path, "mountPath", "mounts"):
            mount_path = m["mountPath"]
            norm = posixpath.normpath(mount_path)
            if norm != mount_path.rstrip("/") or not any(norm == r or norm.startswith(r + "/")
                                                         for r in MOUNT_ROOTS):
                self.refuse(f"{where}.mountPath", f"expected a normalized path below one of "
                                                  f"{', '.join(MOUNT_ROOTS)}")
            if m.get("name") in OPERATOR_VOLUMES or m.get("name") not in volumes:
                self.refuse(f"{where}.name", "expected the name of a volume this template adds")
            if m.get("mountPropagation") not in (None, "None"):
                self.refuse(f"{where}.mountPropagation", "only None is allowed")

    # ---- security contexts: values the Pod Security "restricted" profile allows

    def security_context(self, sc: Any, path: str, *, pod: bool) -> None:
        if not isinstance(sc, dict):
            self.refuse(path, "expected an object")
            return
        for key, value in sc.items():
            at = f"{path}.{key}"
            problem = _security_value(key, value, pod)
            if problem:
                self.refuse(at, problem)


def reserved_env(name: str) -> bool:
    """Names no policy can allow: they choose what code runs (PATH, LD_*, PYTHON*, BASH_ENV, plugin and
    library paths, config files that may name such: NCCL_NET_PLUGIN, FI_PROVIDER_PATH, NCCL_CONF_FILE),
    configure the storage client (AWS_*) or are the operator's own wiring (CAI_*, MASTER_*,
    JOB_COMPLETION_INDEX)."""
    return (name in ("PATH", "HOME", "BASH_ENV", "ENV", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX")
            or name.startswith(("LD_", "PYTHON", "AWS_"))
            or name.endswith(("_PATH", "_FILE", "_PRELOAD", "_LIBRARY")) or "PLUGIN" in name
            or name.startswith("CAI_") and name not in ENV_NAMES)


def _positive_id(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else (
        "expected a non-zero user or group id (not root)")


def _profile(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("type") in ("RuntimeDefault", "Localhost") and set(value) <= {
            "type", "localhostProfile"}:
        return None
    return "expected type RuntimeDefault or Localhost"


def _security_value(key: str, value: Any, pod: bool) -> str | None:
    if key in ("runAsUser", "runAsGroup") or pod and key == "fsGroup":
        return _positive_id(value)
    if key == "runAsNonRoot":
        return None if value is True else "only true is allowed"
    if key in ("seccompProfile", "appArmorProfile"):
        return _profile(value)
    if pod and key == "supplementalGroups":
        ok = isinstance(value, list) and all(_positive_id(v) is None for v in value)
        return None if ok else "expected non-zero group ids"
    if pod and key in ("fsGroupChangePolicy", "supplementalGroupsPolicy", "seLinuxChangePolicy"):
        return None
    if not pod and key in ("allowPrivilegeEscalation", "privileged"):
        return None if value is False else "only false is allowed"
    if not pod and key == "readOnlyRootFilesystem":  # the operator's choice; /tmp is the pod's own
        return None if value is True else "only true is allowed"
    if not pod and key == "procMount":
        return None if value == "Default" else "only Default is allowed"
    if not pod and key == "capabilities":
        if not isinstance(value, dict) or set(value) - {"add", "drop"}:
            return "expected {drop: [ALL]}"
        if value.get("add"):
            return "adding capabilities is not allowed"
        if "drop" in value and "ALL" not in (value.get("drop") or []):
            return "drop must include ALL"
        return None
    return "not allowed (seLinuxOptions, sysctls, windowsOptions and unknown fields are refused)"


def pod_problems(service_account: str | None, template: Mapping[str, Any] | None,
                 policy: PodPolicy | None) -> list[tuple[str, str]]:
    """(field path, what was expected) for every part of a run's pod settings the policy refuses.

    `policy` None checks only the rules no namespace policy can widen (what `cai validate` can know).
    """
    check = _Check(policy)
    if service_account and policy is not None and service_account not in policy.service_account_names:
        allowed = ", ".join(sorted(policy.service_account_names)) or "none"
        check.refuse(SERVICE_ACCOUNT, f"ServiceAccount {service_account!r} is not allowed in this namespace "
                                      f"(allowed: {allowed}; cluster admins allow more with "
                                      "stages.podPolicy.serviceAccountNames)")
    if template is not None:
        check.template(template)
    return check.problems


# --------------------------------------------------------------------------------- forced after merging

RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def force_restricted(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The Pod Security "restricted" fields set on a merged pod spec, whatever the template said.

    The policy already refuses templates that weaken them; this keeps it true of every pod the operator
    creates even if a rule above has a gap. Returns `pod_spec`, changed in place.
    """
    for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "initContainers",
                "ephemeralContainers", "nodeName", "runtimeClassName"):
        pod_spec.pop(key, None)
    pod_spec["securityContext"] = _restrict(pod_spec.get("securityContext"), RESTRICTED_POD)
    for c in pod_spec.get("containers") or []:
        c["securityContext"] = _restrict(c.get("securityContext"), RESTRICTED_CONTAINER)
        c["securityContext"].pop("privileged", None)
        for port in c.get("ports") or []:
            port.pop("hostPort", None)
            port.pop("hostIP", None)
    pod_spec["volumes"] = [v for v in pod_spec.get("volumes") or [] if not NEVER_VOLUME_TYPES & set(v)]
    return pod_spec


def _restrict(sc: Any, forced: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(sc) if isinstance(sc, dict) else {}
    for key in ("seLinuxOptions", "sysctls", "windowsOptions"):
        out.pop(key, None)
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        if key in out and _positive_id(out[key]):
            del out[key]
    for key, value in forced.items():
        if key == "seccompProfile" and _profile(out.get(key)) is None:
            continue  # Localhost profiles are restricted too
        out[key] = value
    return out


def describe(problems: Iterable[tuple[str, str]]) -> list[str]:
    return [f"{path}: {message}" for path, message in problems]

__all__ = ["ClusterPodPolicy", "PodPolicy", "PolicyError", "describe", "force_restricted", "pod_problems"]
