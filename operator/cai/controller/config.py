"""Operator settings read from the environment: the contract with the Helm chart (docs/operator.md).

Where it sits: `main` builds one `OperatorConfig` at start-up and hands it to the controller; the pure
builders read images, defaults and TTLs from it. Nothing else reads the environment.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..pipeline.podpolicy import ClusterPodPolicy

# Where the project publishes its images: the Helm chart's defaults (charts/cai-operator/values.yaml;
# tests/unit/test_images.py ties the two).
DEFAULT_IMAGE_REGISTRY = "ghcr.io/cai-dev"
DEFAULT_STAGE_IMAGE = f"{DEFAULT_IMAGE_REGISTRY}/cai-trainer:{__version__}"
DEFAULT_STAGE_IMAGE_GPU = f"{DEFAULT_IMAGE_REGISTRY}/cai-trainer-gpu:{__version__}"


class ConfigError(ValueError):
    """An environment variable has a value the operator cannot use (message names the variable)."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: expected a value >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator needs that is not in a resource. Defaults suit a single-namespace test."""

    stage_image: str = DEFAULT_STAGE_IMAGE
    stage_image_gpu: str = DEFAULT_STAGE_IMAGE_GPU
    stage_images: dict[str, str] = field(default_factory=dict)  # stage name -> image (overrides both)
    image_pull_policy: str = "IfNotPresent"
    storage_uri: str | None = None  # operator-wide default storage root
    s3_endpoint: str | None = None
    storage_secret: str | None = None  # default Secret name (looked up in the run's namespace by kubelet)
    job_ttl_seconds: int = 86400
    # What runs may set in their pods: stage ServiceAccount, per-namespace widenings (pipeline/podpolicy.py).
    pod_policy: ClusterPodPolicy = field(default_factory=ClusterPodPolicy)
    default_active_deadline_seconds: int | None = None  # Jobs of runs that set no activeDeadlineSeconds
    pod_start_timeout_seconds: float = 600.0  # a stage whose pods have not started by then says why
    default_cpu: str | None = None
    default_memory: str | None = None
    watch_namespaces: tuple[str, ...] = ()  # empty: all namespaces
    torchrun_port: int = 29500
    # Leader election (Lease); identity is the pod name so a restarted container reclaims its lease at once.
    leader_election: bool = True
    lease_name: str = "cai-operator"
    lease_namespace: str = "default"
    lease_duration_seconds: float = 15.0
    lease_renew_seconds: float = 2.0
    # A leader that has not renewed for this long stops acting, before the Lease can expire (client-go's
    # RenewDeadline): a stuck API call must not let two replicas act at once.
    lease_renew_deadline_seconds: float = 10.0
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Level-triggered safety net: every live run is reconciled again after this long without an event.
    resync_seconds: float = 120.0
    workers: int = 8
    metrics_port: int = 8080
    health_port: int = 8081

    def image_for(self, stage: str, gpus: int) -> str:
        if stage in self.stage_images:
            return self.stage_images[stage]
        return self.stage_image_gpu if gpus > 0 else self.stage_image

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OperatorConfig:
        env = os.environ if env is None else env
        images_raw = env.get("CAI_STAGE_IMAGES", "").strip()
        stage_images: dict[str, str] = {}
        if images_raw:
            try:
                parsed = json.loads(images_raw)
            except ValueError as e:
                raise ConfigError(f"CAI_STAGE_IMAGES: expected a JSON object {{stage: image}}: {e}") from None
            if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
                raise ConfigError(
                    "CAI_STAGE_IMAGES: expected a JSON object mapping stage names to image strings"
                )
            from ..api.kinds import STAGES

            unknown = sorted(set(parsed) - set(STAGES))
            if unknown:
                raise ConfigError(
                    f"CAI_STAGE_IMAGES: unknown stage(s) {unknown} (expected some of {sorted(STAGES)})"
                )
            stage_images = dict(parsed)
        stage_image = env.get("CAI_STAGE_IMAGE", "").strip() or DEFAULT_STAGE_IMAGE
        namespaces = tuple(n.strip() for n in env.get("CAI_WATCH_NAMESPACES", "").split(",") if n.strip())
        pod_namespace = env.get("POD_NAMESPACE", "").strip()
        storage_uri = env.get("CAI_STORAGE_URI", "").strip() or None
        stage_sa = env.get("CAI_STAGE_SERVICE_ACCOUNT", "").strip() or None
        try:
            pod_policy = ClusterPodPolicy.from_wire(json.loads(env.get("CAI_POD_POLICY", "").strip() or "{}"),
                                                    stage_service_account=stage_sa)
        except ValueError as e:  # bad JSON or a PolicyError
            raise ConfigError(f"CAI_POD_POLICY: {e}") from None
        deadline = _int(env, "CAI_DEFAULT_ACTIVE_DEADLINE_SECONDS", 0)
        values: dict[str, Any] = {
            "stage_image": stage_image,
            "stage_image_gpu": env.get("CAI_STAGE_IMAGE_GPU", "").strip() or
            (DEFAULT_STAGE_IMAGE_GPU if not env.get("CAI_STAGE_IMAGE") else stage_image),
            "stage_images": stage_images,
            "image_pull_policy": env.get("CAI_IMAGE_PULL_POLICY", "").strip() or "IfNotPresent",
            "storage_uri": storage_uri,
            "s3_endpoint": env.get("CAI_S3_ENDPOINT", "").strip() or None,
            "storage_secret": env.get("CAI_STORAGE_SECRET", "").strip() or None,
            "job_ttl_seconds": _int(env, "CAI_JOB_TTL_SECONDS", 86400),
            "pod_policy": pod_policy,
            "default_active_deadline_seconds": deadline or None,
            "pod_start_timeout_seconds": _float(env, "CAI_POD_START_TIMEOUT_SECONDS", 600.0),
            "default_cpu": env.get("CAI_DEFAULT_CPU", "").strip() or None,
            "default_memory": env.get("CAI_DEFAULT_MEMORY", "").strip() or None,
            "watch_namespaces": namespaces,
            "torchrun_port": _int(env, "CAI_TORCHRUN_PORT", 29500, minimum=1),
            "leader_election": _bool(env, "CAI_LEADER_ELECTION", True),
            "lease_name": env.get("CAI_LEASE_NAME", "").strip() or "cai-operator",
            "lease_namespace": env.get("CAI_LEASE_NAMESPACE", "").strip() or pod_namespace or "default",
            "lease_duration_seconds": _float(env, "CAI_LEASE_DURATION_SECONDS", 15.0),
            "lease_renew_seconds": _float(env, "CAI_LEASE_RENEW_SECONDS", 2.0),
            "lease_renew_deadline_seconds": _float(env, "CAI_LEASE_RENEW_DEADLINE_SECONDS", 0.0),
            "resync_seconds": _float(env, "CAI_RESYNC_SECONDS", 120.0),
            "workers": _int(env, "CAI_WORKERS", 8, minimum=1),
            "metrics_port": _int(env, "CAI_METRICS_PORT", 8080),
            "health_port": _int(env, "CAI_HEALTH_PORT", 8081),
        }
        identity = env.get("POD_NAME", "").strip()
        if identity:
            values["identity"] = identity
        if values["image_pull_policy"] not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                "CAI_IMAGE_PULL_POLICY: expected Always, IfNotPresent or Never, "
                f"got {values['image_pull_policy']!r}"
            )
        if storage_uri and not storage_uri.startswith(("s3://", "file://")):
            raise ConfigError(
                f"CAI_STORAGE_URI: expected s3://bucket/prefix or file:///path, got {storage_uri!r}"
            )
        duration = values["lease_duration_seconds"]
        if not values["lease_renew_deadline_seconds"]:
            values["lease_renew_deadline_seconds"] = round(duration * 2 / 3, 3)  # client-go: 10 s of 15 s
        if not values["lease_renew_seconds"] < values["lease_renew_deadline_seconds"] < duration:
            raise ConfigError(
                "CAI_LEASE_RENEW_SECONDS < CAI_LEASE_RENEW_DEADLINE_SECONDS < CAI_LEASE_DURATION_SECONDS "
                f"expected, got {values['lease_renew_seconds']}, {values['lease_renew_deadline_seconds']}, "
                f"{duration}"
            )
        values.update(overrides)
        return cls(**values)
