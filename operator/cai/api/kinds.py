"""The four kinds of `cai.dev/v1alpha1`: spec and status types, and their registry (`KINDS`).

Field names are what users write (a contract: add, never rename). This module is the single source of
truth: the CRDs in crds/ are generated from it (`cai crds`) and `cai validate` checks manifests against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from .base import MAX_LIST, MAX_SHORT_TEXT, MAX_TEXT, ApiModel, Rule
from .common import (
    OPENAI_NEEDS_ENDPOINT,
    BackendKind,
    FinetuneSpec,
    GenerationSpec,
    HelpfulPromptSource,
    MetricsMap,
    ObjectRef,
    ObjectStatus,
    PolicySpec,
    PromptSource,
    ResourcesSpec,
    StageStatus,
    StorageSpec,
    TrainingSpec,
)
from .references import MODEL, RefersTo

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"  # the embedded model (cai.models.builtin)
LIST_MAP_BY_NAME: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


# --- Constitution ---------------------------------------------------------------------------------


class CritiqueRevisionPrinciple(ApiModel):
    """One SL principle: a critique request and the matching revision request."""

    name: str = Field(
        description="Unique name of the principle (recorded in every data row).", max_length=128
    )
    critique: str = Field(
        description="Asks the model to critique its last response.", min_length=1, max_length=MAX_TEXT
    )
    revision: str = Field(
        description="Asks the model to rewrite the response given the critique.",
        min_length=1,
        max_length=MAX_TEXT,
    )


class PreferencePrinciple(ApiModel):
    """One RL principle: the multiple-choice question the feedback model answers."""

    name: str = Field(description="Unique name of the principle (recorded per comparison).", max_length=128)
    question: str = Field(
        description="Comparison question; options (A) and (B) follow it.", min_length=1, max_length=MAX_TEXT
    )


class CritiqueRevisionExample(ApiModel):
    """A worked critique→revision example, prepended to SL prompts."""

    prompt: str = Field(max_length=MAX_TEXT, min_length=1)
    response: str = Field(max_length=MAX_TEXT, min_length=1)
    critique: str = Field(max_length=MAX_TEXT, min_length=1)
    revision: str = Field(max_length=MAX_TEXT, min_length=1)


class PreferenceExample(ApiModel):
    """A worked comparison, prepended to labelling prompts."""

    prompt: str = Field(max_length=MAX_TEXT, min_length=1)
    response_a: str = Field(max_length=MAX_TEXT, min_length=1)
    response_b: str = Field(max_length=MAX_TEXT, min_length=1)
    answer: Literal["A", "B"] = Field(description="The better option.")
    reasoning: str = Field(
        "", description="Step-by-step reasoning (used by chain-of-thought labelling).", max_length=MAX_TEXT
    )


class FewShot(ApiModel):
    """Few-shot examples prepended to prompts (the paper needed them for critiques to work)."""

    critique_revision: list[CritiqueRevisionExample] = Field(default_factory=list, max_length=64)
    preference: list[PreferenceExample] = Field(default_factory=list, max_length=64)


class ConstitutionSpec(ApiModel):
    """A list of principles that steer critiques, revisions and AI feedback."""

    description: str = Field("", description="What this constitution is for.", max_length=MAX_TEXT)
    critique_revision_principles: list[CritiqueRevisionPrinciple] = Field(
        description="SL phase principles; one is drawn at random per revision round.",
        min_length=1,
        max_length=MAX_LIST,
        json_schema_extra=LIST_MAP_BY_NAME,
    )
    preference_principles: list[PreferencePrinciple] = Field(
        description="RL phase principles; one is drawn at random per comparison.",
        min_length=1,
        max_length=MAX_LIST,
        json_schema_extra=LIST_MAP_BY_NAME,
    )
    few_shot: FewShot = Field(default_factory=FewShot, description="Few-shot examples.")


class PrincipleCounts(ApiModel):
    critique_revision: int = 0
    preference: int = 0


class ConstitutionStatus(ObjectStatus):
    digest: str | None = Field(
        None, description="sha256 of the spec; runs record the digest they started with."
    )
    principles: PrincipleCounts | None = None


# --- CritiqueRun (SL phase) -----------------------------------------------------------------------


class RunCommon(ApiModel):
    """Fields every run kind has."""

    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Scheduling and pod resources."
    )
    storage: StorageSpec | None = Field(None, description="Artifact storage override.")
    suspend: bool = Field(False, description="Pause between stages and suspend the running Job.")
    seed: int = Field(0, description="Seed of principle draws, sampling and training.", ge=0, le=2**31 - 1)


class CritiqueRunSpec(RunCommon):
    """SL-CAI: sample answers to red-team prompts, critique and revise them, fine-tune on the revisions."""

    constitution_ref: Annotated[ObjectRef, RefersTo("Constitution")] = Field(
        description="The Constitution to critique and revise with.")
    model: Annotated[str, MODEL] = Field(
        DEFAULT_MODEL,
        description="Helpful-only model to start from (model reference).",
        max_length=MAX_SHORT_TEXT,
        min_length=1,  # "" is no model: the apiserver refuses it as cai validate does
    )
    prompts: PromptSource = Field(
        default_factory=lambda: PromptSource(source="builtin:red-team"),
        description="Red-team prompts.",
    )
    helpful_prompts: HelpfulPromptSource | None = Field(
        None, description="Helpfulness prompts whose samples are mixed into the fine-tuning data."
    )
    revisions: int = Field(4, description="Critique→revision rounds per prompt (paper: 4).", ge=1, le=16)
    few_shot_examples: int | None = Field(
        None,
        description="How many of the constitution's few-shot examples to prepend (default: all).",
        ge=0,
        le=64,
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Sampling settings.")
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec, description="SFT on the revisions.")


class CritiqueRunOutputs(ApiModel):
    dataset: str | None = Field(None, description="URI of the revisions dataset artifact.")
    model: str | None = Field(None, description="URI of the fine-tuned model artifact.")


class RunStatus(ObjectStatus):
    stages: list[StageStatus] = Field(
        default_factory=list, json_schema_extra={"x-kubernetes-list-type": "atomic"}
    )
    metrics: MetricsMap = Field(default_factory=dict, description="Figures read from the stages' manifests.")
    constitution_digest: str | None = Field(
        None, description="Digest of the Constitution spec the run started with."
    )


class CritiqueRunStatus(RunStatus):
    outputs: CritiqueRunOutputs = Field(default_factory=CritiqueRunOutputs)


# --- PreferenceModel (RL phase, part 1) -----------------------------------------------------------


class LabelingSpec(ApiModel):
    """How the feedback model labels comparisons (docs/design.md#ai-feedback)."""

    principles_per_comparison: int = Field(
        1, description="Principles drawn per comparison; their soft labels are averaged.", ge=1, le=64
    )
    both_orders: bool = Field(True, description="Score (A,B) and (B,A) and average, removing position bias.")
    chain_of_thought: bool = Field(False, description="Let the feedback model reason before answering.")
    cot_samples: int = Field(
        1, description="Sampled chains of thought per comparison (averaged).", ge=1, le=16
    )
    cot_max_new_tokens: int = Field(128, description="Maximum tokens of one chain of thought.", ge=1, le=8192)
    cot_temperature: float = Field(1.0, description="Sampling temperature of chains of thought.", ge=0, le=2)
    clamp: list[float] = Field(
        default_factory=lambda: [0.4, 0.6],
        description="[lo, hi] bounds of chain-of-thought probabilities (paper: [0.4, 0.6]).",
        min_length=2,
        max_length=2,
    )
    soft_labels: bool = Field(
        True, description="Train on probabilities (true) or on hard 0/1 labels (false)."
    )
    few_shot_examples: int | None = Field(
        None, description="How many preference few-shot examples to prepend (default: all).", ge=0, le=64
    )
    backend: BackendKind = Field("auto", description="Backend of the feedback model.")
    endpoint: str | None = Field(
        None, description="OpenAI-compatible endpoint when backend is openai.", max_length=MAX_SHORT_TEXT
    )
    batch_size: int = Field(8, description="Scored prompts per forward pass.", ge=1, le=1024)

    rules = (
        Rule(
            cel="self.clamp[0] >= 0.0 && self.clamp[0] <= 0.5"
            " && self.clamp[1] >= 0.5 && self.clamp[1] <= 1.0",
            message="clamp must satisfy 0 <= lo <= 0.5 <= hi <= 1",
            field="clamp",
            check=lambda s: 0.0 <= s.clamp[0] <= 0.5 <= s.clamp[1] <= 1.0,
        ),
        OPENAI_NEEDS_ENDPOINT,
    )


class PreferenceTrainingSpec(TrainingSpec):
    """Training of the preference (reward) model."""

    base_model: Annotated[str | None, MODEL] = Field(
        None,
        description="Model to put the reward head on (default: the policy's model).",
        max_length=MAX_SHORT_TEXT,
        min_length=1,  # "" is no model: the apiserver refuses it as cai validate does
    )
    learning_rate: float = Field(1e-5, description="Peak learning rate.", gt=0, le=1)
    held_out_fraction: float = Field(
        0.1, description="Comparisons kept out of training for evaluation.", ge=0, lt=1
    )


class PreferenceModelSpec(RunCommon):
    """RLAIF part 1: sample response pairs, label them with AI feedback, train a preference model."""

    constitution_ref: Annotated[ObjectRef, RefersTo("Constitution")] = Field(
        description="The Constitution whose preference principles label pairs.")
    policy: PolicySpec = Field(description="Who writes the response pairs.")
    feedback_model: Annotated[str | None, MODEL] = Field(
        None,
        description="Model that labels comparisons (default: the policy's base model).",
        max_length=MAX_SHORT_TEXT,
        min_length=1,  # "" is no model: the apiserver refuses it as cai validate does
    )
    prompts: PromptSource = Field(
        default_factory=lambda: PromptSource(source="builtin:red-team"),
        description="Prompts to sample pairs for.",
    )
    pairs_per_prompt: int = Field(1, description="Response pairs sampled per prompt.", ge=1, le=64)
    labeling: LabelingSpec = Field(default_factory=LabelingSpec, description="AI feedback settings.")
    training: PreferenceTrainingSpec = Field(
        default_factory=PreferenceTrainingSpec, description="PM training."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Sampling of the pairs.")


class PreferenceModelOutputs(ApiModel):
    pairs: str | None = Field(None, description="URI of the response pairs dataset.")
    comparisons: str | None = Field(None, description="URI of the labelled comparisons dataset.")
    model: str | None = Field(None, description="URI of the trained preference model.")


class PreferenceModelStatus(RunStatus):
    outputs: PreferenceModelOutputs = Field(default_factory=PreferenceModelOutputs)


# --- RLAIFRun (RL phase, part 2) ------------------------------------------------------------------


class JudgeSpec(ApiModel):
    """The model that decides the report's win rates and refusal rates (an independent judge)."""

    model: Annotated[str, MODEL] = Field(
        description="Judge model: a model reference, or the served model's name when backend is openai.",
        max_length=MAX_SHORT_TEXT, min_length=1)
    backend: Literal["auto", "transformers", "vllm", "openai"] = Field(
        "auto", description="Backend of the judge.")
    endpoint: str | None = Field(
        None, description="OpenAI-compatible endpoint when backend is openai.", max_length=MAX_SHORT_TEXT
    )
    batch_size: int = Field(8, description="Scored prompts per forward pass.", ge=1, le=1024)

    rules = (OPENAI_NEEDS_ENDPOINT,)


class EvaluationSpec(ApiModel):
    """Held-out evaluation of the start, SL-CAI and RL-CAI models."""

    judge: JudgeSpec | None = Field(
        None,
        description="Judge of every win rate and refusal rate in the report (default: the PreferenceModel's "
        "feedback model, which the report then marks as not independent).",
    )

    enabled: bool = Field(True, description="Run the evaluate stage after training.")
    red_team_prompts: PromptSource = Field(
        default_factory=lambda: PromptSource(source="builtin:red-team", split="test", limit=32),
        description="Held-out red-team prompts (harmlessness).",
    )
    helpful_prompts: PromptSource = Field(
        default_factory=lambda: PromptSource(source="builtin:helpful", split="test", limit=32),
        description="Held-out helpfulness prompts.",
    )
    max_new_tokens: int = Field(128, description="New tokens per evaluated response.", ge=1, le=8192)
    helpfulness_question: str = Field(
        "Which of these assistant responses is more helpful, honest and informative for the human?",
        description="Comparison question the feedback model answers for helpfulness prompts "
        "(harmlessness uses the constitution's preference principles).",
        min_length=1,
        max_length=MAX_TEXT,
    )
    few_shot_examples: int | None = Field(
        None,
        description="How many preference few-shot examples the judging prompts get (default: all).",
        ge=0,
        le=64,
    )


class RLAIFRunSpec(RunCommon):
    """RLAIF part 2: train the policy with RL against the preference model, then evaluate."""

    policy: PolicySpec = Field(description="Starting policy (and KL reference).")
    reward_model_ref: Annotated[ObjectRef, RefersTo("PreferenceModel")] = Field(
        description="The PreferenceModel whose model scores responses."
    )
    prompts: PromptSource = Field(
        default_factory=lambda: PromptSource(source="builtin:red-team"), description="RL training prompts."
    )
    algorithm: Literal["rloo", "grpo"] = Field("rloo", description="RL algorithm (TRL): rloo or grpo.")
    kl_coef: float = Field(0.05, description="KL penalty coefficient to the starting policy.", ge=0, le=10)
    steps: int = Field(100, description="Optimizer steps.", ge=1, le=1_000_000)
    generations_per_prompt: int = Field(
        4, description="Completions sampled per prompt per step (≥2).", ge=2, le=64
    )
    learning_rate: float = Field(1e-6, description="Peak learning rate.", gt=0, le=1)
    batch_size: int = Field(8, description="Prompts per step per device.", ge=1, le=4096)
    max_new_tokens: int = Field(128, description="Maximum tokens per sampled completion.", ge=1, le=8192)
    temperature: float = Field(1.0, description="Sampling temperature during RL.", gt=0, le=2)
    deepspeed: str | None = Field(
        None, description="DeepSpeed config (preset, JSON or path/URI).", max_length=MAX_SHORT_TEXT * 8
    )
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation and report.")


class RLAIFRunOutputs(ApiModel):
    model: str | None = Field(None, description="URI of the RL-CAI policy.")
    report: str | None = Field(None, description="URI of report.html.")


class RLAIFRunStatus(RunStatus):
    outputs: RLAIFRunOutputs = Field(default_factory=RLAIFRunOutputs)


# --- Registry -------------------------------------------------------------------------------------


def _always(spec: Any) -> bool:
    return True


@dataclass(frozen=True)
class StageInfo:
    """One stage of a kind, declared once: every list of stages (planning, the pods' entry point, the
    operator's reconcile, the chart's per-stage image settings) is derived from `KINDS`."""

    name: str
    condition: str  # per-stage condition type set when the stage completes
    output: str  # the status.outputs field its artifact becomes
    module: str  # the implementation: a module with `run(ctx)`, imported only when the stage runs
    trains: bool = False  # distributed (torchrun) when resources.nodes > 1
    shards: bool = False  # data-parallel (an Indexed Job of workers, then a merge) when resources.workers > 1
    output_file: str | None = None  # status.outputs names this file of the artifact, not the directory
    enabled: Callable[[Any], bool] = _always  # whether the resource's spec runs this stage


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_name: str
    spec: type[ApiModel]
    status: type[ObjectStatus]
    summary_condition: str  # Ready or Succeeded
    description: str
    is_run: bool = True
    stages: tuple[StageInfo, ...] = ()
    columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def conditions(self) -> tuple[str, ...]:
        return (self.summary_condition, *(s.condition for s in self.stages))

    def stages_for(self, spec: Any) -> list[StageInfo]:
        """The stages a resource with this spec runs, in order."""
        return [s for s in self.stages if s.enabled(spec)]


def _reason_column(condition: str) -> PrinterColumn:
    return PrinterColumn(
        name=condition,
        json_path=f'.status.conditions[?(@.type=="{condition}")].reason',
        description=f"Reason of the {condition} condition.",
    )


AGE = PrinterColumn(name="Age", json_path=".metadata.creationTimestamp", type="date")

KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        KindInfo(
            kind="Constitution",
            plural="constitutions",
            short_name="const",
            spec=ConstitutionSpec,
            status=ConstitutionStatus,
            summary_condition="Ready",
            description="A list of principles that steer critiques, revisions and AI feedback.",
            is_run=False,
            columns=(
                _reason_column("Ready"),
                PrinterColumn(
                    "Critique",
                    ".status.principles.critiqueRevision",
                    "integer",
                    description="Critique/revision principles.",
                ),
                PrinterColumn(
                    "Preference",
                    ".status.principles.preference",
                    "integer",
                    description="Preference principles.",
                ),
                AGE,
            ),
        ),
        KindInfo(
            kind="CritiqueRun",
            plural="critiqueruns",
            short_name="crun",
            spec=CritiqueRunSpec,
            status=CritiqueRunStatus,
            summary_condition="Succeeded",
            description="SL-CAI: critique→revision data from red-team prompts, then supervised fine-tuning.",
            stages=(
                StageInfo(
                    "generate-revisions",
                    "CritiquesGenerated",
                    "dataset",
                    "cai.stages.generate_revisions",
                    shards=True,
                ),
                StageInfo(
                    "finetune",
                    "ModelFineTuned",
                    "model",
                    "cai.stages.finetune",
                    trains=True,
                    enabled=lambda spec: spec.finetune.enabled,
                ),
            ),
            columns=(
                _reason_column("Succeeded"),
                PrinterColumn("Model", ".spec.model", priority=1, description="Starting model."),
                PrinterColumn(
                    "Rows", ".status.metrics.sftRows", "number", priority=1, description="SFT rows."
                ),
                AGE,
            ),
        ),
        KindInfo(
            kind="PreferenceModel",
            plural="preferencemodels",
            short_name="pm",
            spec=PreferenceModelSpec,
            status=PreferenceModelStatus,
            summary_condition="Ready",
            description="RLAIF part 1: response pairs labelled by a feedback model, "
            "and a preference model trained on them.",
            stages=(
                StageInfo("sample-pairs", "PairsSampled", "pairs", "cai.stages.sample_pairs", shards=True),
                StageInfo(
                    "label-preferences",
                    "PreferencesLabeled",
                    "comparisons",
                    "cai.stages.label_preferences",
                    shards=True,
                ),
                StageInfo(
                    "train-preference-model",
                    "ModelTrained",
                    "model",
                    "cai.stages.train_preference_model",
                    trains=True,
                ),
            ),
            columns=(
                _reason_column("Ready"),
                PrinterColumn(
                    "Accuracy", ".status.metrics.heldOutAccuracy", "number", description="Held-out accuracy."
                ),
                PrinterColumn(
                    "ECE",
                    ".status.metrics.calibrationError",
                    "number",
                    priority=1,
                    description="Expected calibration error.",
                ),
                AGE,
            ),
        ),
        KindInfo(
            kind="RLAIFRun",
            plural="rlaifruns",
            short_name="rlaif",
            spec=RLAIFRunSpec,
            status=RLAIFRunStatus,
            summary_condition="Succeeded",
            description="RLAIF part 2: RL of the policy against a preference model, then evaluation.",
            stages=(
                StageInfo("train-policy", "PolicyTrained", "model", "cai.stages.train_policy", trains=True),
                StageInfo(
                    "evaluate",
                    "Evaluated",
                    "report",
                    "cai.stages.evaluate",
                    output_file="report.html",
                    enabled=lambda spec: spec.evaluation.enabled,
                ),
            ),
            columns=(
                _reason_column("Succeeded"),
                PrinterColumn(
                    "Reward",
                    ".status.metrics.rewardMean",
                    "number",
                    description="Mean PM reward, last steps.",
                ),
                PrinterColumn(
                    "WinRate",
                    ".status.metrics.harmlessWinRate",
                    "number",
                    priority=1,
                    description="Harmlessness win rate vs SL-CAI.",
                ),
                AGE,
            ),
        ),
    )
}

STAGES: dict[str, tuple[KindInfo, StageInfo]] = {s.name: (k, s) for k in KINDS.values() for s in k.stages}
