"""`cai run`: validate manifests, order them by references, run each resource's stages as
`cai stage` subprocesses with rich progress bars, and keep status in the store.

Finished stages are never redone (their manifests match), so Ctrl-C or a crash loses only the stage
in flight, and that stage resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..api.kinds import STAGES, ConstitutionSpec, ConstitutionStatus, RunStatus
from ..api.manifest import Resource
from ..models.cache import cache_dir
from ..pipeline.plan import Blocked, order_by_references, plan_resource
from ..pipeline.runstate import ARTIFACT_MISSING, RunState, constitution_status
from ..progress import LOG_LINE, PREFIX
from ..store import local_path, manifest_digest, read_manifest, resource_root
from ..store.fs import normalize
from ..validation import validate_paths
from . import state
from .lock import ResourceBusyError, resource_lock
from .status import print_resources

console = Console(stderr=True)


class _Lookup:
    """Resources of this run first, then resources run earlier into the same store."""

    def __init__(self, store: str, resources: list[Resource]):
        self.store = store
        self.by_key = {(r.kind, r.name): r for r in resources}

    def __call__(self, kind: str, name: str) -> Resource | None:
        res = self.by_key.get((kind, name))
        if res is not None:
            return res if res.status is not None else None
        return state.stored_resource(self.store, kind, "default", name)


# The stage process; a test may point it elsewhere.
STAGE_COMMAND = [sys.executable, "-m", "cai", "stage"]
TAIL_SHOWN = 25  # lines of a failed stage's log printed with its error


def stage_log_path(store: str, res: Resource, stage: str) -> Path:
    """Where a stage's whole output goes: next to the resource's status in a local store, else in the
    model cache's logs/ (an object store gets no half-written logs)."""
    root = local_path(resource_root(store, res.namespace, res.info.plural, res.name, res.uid))
    if root is not None:
        return root / "logs" / f"{stage}.log"
    return cache_dir() / "logs" / f"{res.namespace}-{res.info.plural}-{res.name}-{stage}.log"


def is_own_line(line: str, stage: str) -> bool:
    """Lines our code writes (stage log lines, errors, plain progress); library output (DeepSpeed, TRL's
    step dicts, Triton notices, warnings) goes to the stage's log file only."""
    return line.startswith((f"[{stage}] ", "error: ")) or bool(LOG_LINE.match(line))


def _run_stage_process(
    stage_spec, progress: Progress | None, tail: deque[str], log: Path | None = None
) -> int:
    with tempfile.NamedTemporaryFile(
        "w", suffix=".json", prefix=f"cai-{stage_spec.stage}-", delete=False
    ) as f:
        f.write(stage_spec.model_dump_json(by_alias=True))
        spec_file = f.name
    # rich bars replace tqdm bars; plain log lines otherwise.
    env = {
        **os.environ,
        "CAI_PROGRESS": "json" if progress is not None else "log",
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
    }
    tasks: dict[str, TaskID] = {}
    log_file = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_file = log.open("a", encoding="utf-8")
        log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} cai stage {stage_spec.stage}\n")
    try:
        proc = subprocess.Popen(
            [*STAGE_COMMAND, stage_spec.stage, "--spec", spec_file],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith(PREFIX) and progress is not None:
                    ev = json.loads(line[len(PREFIX):])
                    label = f"{stage_spec.stage}: {ev['task']}"
                    if label not in tasks:
                        tasks[label] = progress.add_task(label, total=ev["total"])
                    progress.update(tasks[label], completed=ev["done"], total=ev["total"])
                    continue
                tail.append(line)
                if log_file is not None:
                    log_file.write(line + "\n")
                    log_file.flush()
                    if not is_own_line(line, stage_spec.stage):
                        continue
                console.print(f"[dim]{line}[/dim]", markup=True, highlight=False) if progress else print(
                    line, file=sys.stderr
                )
            return proc.wait()
        except KeyboardInterrupt:
            # The child got the same SIGINT; give it a moment to stop cleanly.
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    finally:
        Path(spec_file).unlink(missing_ok=True)
        if log_file is not None:
            log_file.close()


def _run_resource(res: Resource, store: str, lookup: _Lookup, quiet: bool) -> bool:
    status = state.load_status(store, res)
    assert isinstance(status, RunStatus)
    res.status = status
    run = RunState(res.info, status, res.generation)
    plan = plan_resource(res, lookup, store)
    if isinstance(plan, Blocked):
        run.blocked(plan)
        state.save(store, res)
        console.print(f"[yellow]{res.display}: {plan.reason}: {plan.message}[/yellow]")
        return False
    status.constitution_digest = plan.constitution_digest
    for spec in plan.stages:
        _, stage = STAGES[spec.stage]
        existing = read_manifest(spec.output)
        run.stage_started(stage)
        state.save(store, res)
        tail: deque[str] = deque(maxlen=200)
        log = stage_log_path(store, res, spec.stage)
        started = time.monotonic()
        console.print(
            f"[bold]{res.display}[/bold] → {spec.stage}" + (" (checking for resume)" if existing else ""),
            f"[dim](log: {log})[/dim]", soft_wrap=True,
        )
        progress = None if quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        try:
            if progress is not None:
                with progress:
                    rc = _run_stage_process(spec, progress, tail, log)
            else:
                rc = _run_stage_process(spec, None, tail, log)
        except KeyboardInterrupt:
            run.stage_failed(stage, "Interrupted", "interrupted; run again to resume")
            state.save(store, res)
            raise
        manifest = read_manifest(spec.output) if rc == 0 else None
        # Exit status 0 is not enough: the artifact must be the one this plan asked for (the operator checks
        # the same).
        problem = spec.output_problem(manifest, {r: manifest_digest(u) if u else None
                                                 for r, u in spec.inputs.items()}) if rc == 0 else None
        if manifest is None or problem:
            errors = [line for line in tail if line.startswith("error:")] or list(tail)[-5:]
            said = " | ".join(e.removeprefix("error: ") for e in errors)[-2000:]
            message = problem or said or f"exit code {rc}"
            run.stage_failed(stage, ARTIFACT_MISSING if problem else "StageFailed", message)
            state.save(store, res)
            if rc != 0 and tail:
                # What the stage printed last, libraries included: the cause is often there.
                console.print(f"[dim]last lines of {log}:[/dim]", soft_wrap=True)
                for line in list(tail)[-TAIL_SHOWN:]:
                    console.print(line, markup=False, highlight=False, soft_wrap=True)
            console.print(f"[red]{res.display}: stage {spec.stage} failed: {message}[/red]")
            return False
        run.stage_succeeded(stage, spec.output, manifest.get("metrics", {}))
        state.save(store, res)
        console.print(f"  [green]✓[/green] {spec.stage} ({time.monotonic() - started:.1f}s) → {spec.output}")
    run.completed()
    state.save(store, res)
    return True


def run_local(
    paths: list[str], store: str, only: list[str] | None = None, force: bool = False, quiet: bool = False
) -> int:
    store = normalize(store)
    try:
        return _run_local(paths, store, only, force, quiet)
    except state.DamagedStatusError as e:  # of a resource referenced from an earlier run
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run_local(paths: list[str], store: str, only: list[str] | None, force: bool, quiet: bool) -> int:
    resources, problems = validate_paths(
        paths, local=True, known=lambda k, n: state.stored_resource(store, k, "default", n)
    )
    if problems:
        for p in problems:
            print(p)
        print(f"error: {len(problems)} problem(s); nothing was run", file=sys.stderr)
        return 1
    if not resources:
        print("error: no cai.dev resources found in " + ", ".join(paths), file=sys.stderr)
        return 1
    if force:
        os.environ["CAI_FORCE"] = "1"
    lookup = _Lookup(store, resources)
    ordered = order_by_references(resources)
    selected = {s for s in only} if only else None
    ok = True
    try:
        for res in ordered:
            if res.info.is_run and selected is not None and res.display not in selected:
                res.status = state.load_status(store, res)
                continue
            if not res.info.is_run:
                res.status = constitution_status(res.typed(ConstitutionSpec, ConstitutionStatus))
                state.save(store, res)
                continue
            try:
                with resource_lock(store, res):
                    ok = _run_resource(res, store, lookup, quiet) and ok
            except ResourceBusyError as e:
                print(f"error: {e}", file=sys.stderr)  # plain: a long lock path must not be folded
                ok = False
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted: finished stages are kept; run the same command again to resume[/yellow]"
        )
        return 130
    print_resources(console, ordered)
    return 0 if ok else 1
