"""Types shared by several kinds: references, generation settings, resources, storage, conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from .base import MAX_NAME, MAX_SHORT_TEXT, ApiModel, Rule
from .references import MODEL, RefersTo

CONDITIONS_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

# Which generation backend runs a model (`cai.models.backends`; its `Backend` is the interface they share).
BackendKind = Literal["auto", "transformers", "vllm", "openai"]

# Shared by every spec with a `backend` and an `endpoint` (generation, labelling).
OPENAI_NEEDS_ENDPOINT = Rule(
    cel="self.backend != 'openai' || has(self.endpoint)",
    message="endpoint is required when backend is openai",
    field="endpoint",
    check=lambda spec: spec.backend != "openai" or bool(spec.endpoint),
)


class ObjectRef(ApiModel):
    """A reference to another object of the same namespace, by name."""

    name: str = Field(
        description="Name of the referenced object.", max_length=MAX_NAME, pattern=DNS_SUBDOMAIN
    )


class PromptSource(ApiModel):
    """Where prompts come from and how many to use."""

    source: str = Field(
        description=(
            "Prompt set: builtin:red-team, builtin:helpful, a JSONL/CSV/Parquet file (path, file:// or "
            "s3:// URI) with a 'prompt' column, or hf:<dataset>[:<config>] loaded with datasets."
        ),
        max_length=MAX_SHORT_TEXT,
        min_length=1,
    )
    limit: int | None = Field(
        None, description="Use at most this many prompts (first N after filtering).", ge=1
    )
    split: str | None = Field(
        None,
        description="Split to read (builtin sets: train or test; hf: datasets split name). Default: train.",
        max_length=64,
    )


class HelpfulPromptSource(PromptSource):
    """Helpfulness prompts whose sampled answers are mixed into the SL training data."""

    samples_per_prompt: int = Field(
        2, description="Responses sampled per helpfulness prompt (paper: 2).", ge=1, le=16
    )


class GenerationSpec(ApiModel):
    """How text is sampled from a model."""

    backend: BackendKind = Field(
        "auto",
        description="Generation backend: auto (vLLM on GPU, else transformers), "
                    "transformers, vllm or openai.",
    )
    endpoint: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server (backend openai), e.g. http://vllm:8000/v1.",
        max_length=MAX_SHORT_TEXT,
    )
    max_new_tokens: int = Field(256, description="Maximum new tokens per response.", ge=1, le=8192)
    temperature: float = Field(1.0, description="Sampling temperature (paper: 1.0); 0 is greedy.", ge=0, le=2)
    top_p: float = Field(1.0, description="Nucleus sampling probability mass.", gt=0, le=1)
    batch_size: int = Field(16, description="Prompts per generation batch.", ge=1, le=1024)

    rules = (OPENAI_NEEDS_ENDPOINT,)


class LoraSpec(ApiModel):
    """Low-rank adapters (PEFT LoRA) instead of full fine-tuning; merged into the saved model."""

    r: int = Field(16, description="Adapter rank.", ge=1, le=1024)
    alpha: int = Field(32, description="LoRA alpha (scaling numerator).", ge=1, le=4096)
    dropout: float = Field(0.05, description="Dropout on adapter inputs.", ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
        max_length=64,
    )


class TrainingSpec(ApiModel):
    """Optimizer and batching settings shared by the trainers."""

    epochs: float = Field(1.0, description="Passes over the training data (paper: 1).", gt=0, le=100)
    learning_rate: float = Field(2e-5, description="Peak learning rate.", gt=0, le=1)
    batch_size: int = Field(8, description="Per-device batch size.", ge=1, le=4096)
    gradient_accumulation_steps: int = Field(
        1, description="Micro-batches per optimizer step.", ge=1, le=1024
    )
    max_length: int = Field(1024, description="Maximum tokens of a training sequence.", ge=16, le=131072)
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    deepspeed: str | None = Field(
        None,
        description=(
            "DeepSpeed config: a preset (zero2, zero3), a JSON object as a string, or a path/URI to a JSON "
            "file. Passed through to the trainer; meant for GPUs."
        ),
        max_length=MAX_SHORT_TEXT * 8,
    )


class FinetuneSpec(TrainingSpec):
    """Supervised fine-tuning of the model on the revisions (SL-CAI)."""

    enabled: bool = Field(True, description="Fine-tune after generating revisions.")


class Toleration(ApiModel):
    """A Kubernetes toleration for the stage pods."""

    key: str | None = Field(None, max_length=MAX_NAME)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, max_length=MAX_NAME)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(ApiModel):
    """Where and how the stage Jobs run."""

    gpus_per_node: int = Field(0, description="nvidia.com/gpu per pod.", ge=0, le=16)
    nodes: int = Field(
        1,
        description="Pods per training stage; >1 runs an Indexed Job with torchrun rendezvous.",
        ge=1,
        le=64,
    )
    workers: int = Field(
        1,
        description="Pods per generation stage (generate-revisions, sample-pairs, label-preferences); >1 "
        "runs an Indexed Job whose pod k takes every chunk of prompts i with i mod workers = k, and the "
        "last worker to finish merges. The output equals that of one worker, row for row.",
        ge=1,
        le=256,
    )
    cpu: str | None = Field(
        None, description="CPU request and limit per pod (quantity).", pattern=QUANTITY, max_length=32
    )
    memory: str | None = Field(
        None, description="Memory request and limit per pod (quantity).", pattern=QUANTITY, max_length=32
    )
    node_selector: dict[str, str] | None = Field(None, description="Node labels the pods must match.")
    tolerations: list[Toleration] | None = Field(None, description="Tolerations of the pods.", max_length=64)
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the pods.", max_length=MAX_NAME
    )
    queue_name: str | None = Field(
        None,
        description="Kueue LocalQueue: Jobs get kueue.x-k8s.io/queue-name and are created suspended.",
        max_length=MAX_NAME,
    )
    service_account_name: str | None = Field(
        None, description="ServiceAccount of the pods.", max_length=MAX_NAME
    )
    backoff_limit: int = Field(
        2, description="Retries of a failed stage pod before the stage fails.", ge=0, le=100
    )
    active_deadline_seconds: int | None = Field(None, description="Deadline of each stage Job.", ge=1)
    pod_template: dict[str, Any] | None = Field(
        None,
        description="Partial PodTemplateSpec strategically merged into each stage pod.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class StorageSpec(ApiModel):
    """Artifact storage for this resource (overrides the namespace's cai-storage ConfigMap)."""

    uri: str = Field(
        description="Storage root, e.g. s3://bucket/prefix or file:///data/cai.",
        max_length=MAX_SHORT_TEXT,
        pattern=r"^(s3|file)://.+",
    )
    endpoint: str | None = Field(
        None, description="S3 endpoint URL (MinIO, Ceph, ...).", max_length=MAX_SHORT_TEXT
    )
    secret_ref: ObjectRef | None = Field(
        None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "passed to pods via secretKeyRef.",
    )


class PolicySpec(ApiModel):
    """The policy model: a CritiqueRun's fine-tuned model, or a model reference."""

    critique_run_ref: Annotated[ObjectRef | None, RefersTo("CritiqueRun")] = Field(
        None, description="Use this CritiqueRun's fine-tuned model.")
    model: Annotated[str | None, MODEL] = Field(
        None,
        description="A model reference (builtin:, hf:, s3://, file://, path).",
        max_length=MAX_SHORT_TEXT,
        min_length=1,  # "" is no model: the apiserver refuses it as cai validate does
    )

    rules = (
        Rule(
            cel="has(self.critiqueRunRef) != has(self.model)",
            message="set exactly one of critiqueRunRef or model",
            check=lambda p: (p.critique_run_ref is None) != (p.model is None),
        ),
    )


ConditionStatus = Literal["True", "False", "Unknown"]


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Condition(ApiModel):
    """A Kubernetes-style condition (type, status, CamelCase reason, message)."""

    type: str = Field(description="Condition type, e.g. Succeeded.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason of the last transition.", max_length=1024)
    message: str = Field("", description="Human-readable detail.", max_length=32768)
    last_transition_time: str | None = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="metadata.generation this condition is about.")


class ObjectStatus(ApiModel):
    # The fields every kind's status starts with (a base without a docstring: the CRDs stay as they are).
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)


class StageStatus(ApiModel):
    """Progress of one stage."""

    name: str = Field(description="Stage name, e.g. finetune.", max_length=64)
    job_name: str | None = Field(
        None, description="The Job running it (operator) or null (local).", max_length=63
    )
    start_time: str | None = Field(None, description="When it started.")
    completion_time: str | None = Field(None, description="When it finished successfully.")
    attempts: int = Field(0, description="Times it was started.", ge=0)


MetricsMap = dict[str, float]
