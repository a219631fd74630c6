"""One engine per GPU inside a worker pod: a pod of a data-parallel stage runs its GPUs as sub-workers.

Sits between the pods' entry point (`runtime.run_stage`) and the shard machinery. Worker K of N whose pod
has G GPUs, running a model that fits one GPU (`parallelism.plan_engine`), starts G processes
`cai stage … --workers N·G --worker K·G+j`, each seeing one GPU: shards, resume and the merge are those of
N·G single-GPU workers, so the output is still row for row what one worker writes. Every pod of a stage
must decide alike (the same model and GPU type: give the stage a nodeSelector for one GPU product).
GPU-only path: `--engines auto` is 1 without CUDA; `--engines G` forces G local processes (what the CPU
test runs). Never run on a GPU yet (README, "GPU paths").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from ..models.backends.parallelism import EnginePlan, plan_engine, weight_bytes
from ..pipeline.stagespec import StageSpec
from ..store import Shard

# The backend and model role of each stage that shards: where its engine's model comes from.
ENGINE_OF: dict[str, Callable[[Any], tuple[str, str]]] = {
    "generate-revisions": lambda spec: (spec.generation.backend, "policy"),
    "sample-pairs": lambda spec: (spec.generation.backend, "policy"),
    "label-preferences": lambda spec: (spec.labeling.backend, "feedback"),
}


def plan_pod(spec: StageSpec) -> EnginePlan:
    """`--engines auto`: how many engines this pod runs (several only on CUDA with several GPUs)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        return EnginePlan(1, 1, "one GPU" if gpus else "no GPU")
    backend, role = ENGINE_OF[spec.stage](spec.typed_spec())
    if backend == "openai" or not spec.models.get(role):  # the stage itself reports a missing model
        return EnginePlan(1, 1, "an external server generates" if backend == "openai" else "no model")
    from ..models.resolve import resolve_model

    path = resolve_model(spec.models[role])
    config = json.loads((path / "config.json").read_text())
    memory = torch.cuda.get_device_properties(0).total_memory
    return plan_engine(config, weight_bytes(path), gpus, memory, can_shard=True)


def _visible_gpu(j: int) -> str:
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[j] if j < len(visible) else str(j)


def run_engines(name: str, spec_path: str, force: bool, pod: Shard, engines: int,
                log: Callable[[str], None]) -> list[str]:
    """Run worker `pod` as `engines` sub-workers (one GPU each where the pod has that many) and wait for
    all of them; a line per engine that failed. A failed engine leaves its siblings running: their
    finished chunks count when the pod is retried."""
    import torch

    gpus = torch.cuda.is_available() and torch.cuda.device_count() >= engines
    count = pod.count * engines
    indices = [pod.index * engines + j for j in range(engines)]  # this pod's sub-workers of `count`
    children: list[subprocess.Popen[bytes]] = []
    for j, index in enumerate(indices):
        argv = [sys.executable, "-m", "cai", "stage", name, "--spec", spec_path, "--workers", str(count),
                "--worker", str(index), "--engines", "1", *(["--force"] if force else [])]
        env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": _visible_gpu(j)} if gpus else {})}
        children.append(subprocess.Popen(argv, env=env))
        log(f"engine {j + 1} of {engines}: worker {index}/{count}"
            + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""))

    def forward(signum: int, _frame: object) -> None:  # the kubelet stops the pod: stop every engine
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [child.wait() for child in children]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return [f"engine {j + 1} of {engines} (worker {index}/{count}) exited with {rc}"
            for j, (index, rc) in enumerate(zip(indices, codes, strict=True)) if rc]
