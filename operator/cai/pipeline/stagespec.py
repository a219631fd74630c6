"""The document a stage process receives (`cai stage NAME --spec FILE`): everything it needs, nothing else.

Pods get it from a ConfigMap, the local runner from a temp file. It carries no credentials.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import Field

from ..api.base import ApiModel
from ..api.kinds import KINDS, ConstitutionSpec


class StageSpec(ApiModel):
    stage: str = Field(description="Stage name, e.g. generate-revisions.")
    kind: str
    name: str
    namespace: str = "default"
    uid: str = "local"
    spec: dict[str, Any] = Field(description="The resource's spec in wire form.")
    constitution: dict[str, Any] | None = Field(
        None, description="Spec of the Constitution in force, if any."
    )
    constitution_digest: str | None = None
    models: dict[str, str] = Field(
        default_factory=dict, description="Model references by role (policy, feedback, ...)."
    )
    inputs: dict[str, str] = Field(default_factory=dict, description="Input artifact URIs by role.")
    output: str = Field(description="URI of the artifact directory this stage writes.")

    def typed_spec(self) -> ApiModel:
        """The resource's spec as its kind's type (`KINDS[kind].spec`)."""
        return KINDS[self.kind].spec.model_validate(self.spec)

    def typed_constitution(self) -> ConstitutionSpec:
        if self.constitution is None:
            raise ValueError(
                f"stage {self.stage} of {self.kind}/{self.name} needs a constitution but none was given"
            )
        return ConstitutionSpec.model_validate(self.constitution)

    def digest(self, input_manifest_digests: dict[str, str | None], version: str | None = None) -> str:
        """What the stage's result depends on: its spec, the constitution, models, input artifacts and the
        version of the code that ran it (this one unless `version` says which)."""
        from .. import __version__

        payload = {
            "version": version or __version__,
            "stage": self.stage,
            "spec": self.spec,
            "constitutionDigest": self.constitution_digest,
            "models": self.models,
            "inputs": input_manifest_digests,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def output_problem(
        self, manifest: dict[str, Any] | None, input_manifest_digests: dict[str, str | None]
    ) -> str | None:
        """Why the stage's artifact is not the one this spec plans (None when it is): both runners ask
        before they mark a stage succeeded, so an exit status alone never makes a stage succeed.

        `manifest` is the output's manifest.json (None: absent); `input_manifest_digests` the digests of
        the input manifests as they are now. The manifest's `inputsDigest` must be the digest of this
        spec with those inputs, computed for the version that wrote it (`producer.version`).
        """
        if manifest is None:
            return (f"stage {self.stage} finished without publishing its artifact: "
                    f"{self.output}/manifest.json does not exist")
        producer = manifest.get("producer")
        version = producer.get("version") if isinstance(producer, dict) else None
        expected = self.digest(input_manifest_digests, version if isinstance(version, str) else None)
        found = manifest.get("inputsDigest")
        if found != expected:
            return (f"stage {self.stage} finished but its artifact {self.output} was not written for this "
                    f"run's plan (manifest inputsDigest {str(found)[:16]}…, planned {expected[:16]}…)")
        return None
